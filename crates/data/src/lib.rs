//! iapt-data
