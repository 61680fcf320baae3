//! The Handyman deterministic simulator.
