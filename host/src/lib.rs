//! The Handyman host runtime: drives `handyman-core` with the wall clock, runs handlers as
//! WebAssembly components, stores everything durably, and serves the CLI and HTTP API.

pub mod cli;
pub mod runtime;
