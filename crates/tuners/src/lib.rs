//! iapt-tuners
