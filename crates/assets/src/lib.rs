//! Fetch, verify and cache real assets.
