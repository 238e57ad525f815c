//! iapt-train
