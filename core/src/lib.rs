//! Handyman core.
