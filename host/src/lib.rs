//! The Handyman host runtime: drives `handyman-core` with the wall clock, runs handlers as
//! WebAssembly components, stores everything durably, and serves the CLI and HTTP API.
//!
//! Map: [`driver`] owns the core and the storage on one thread and feeds [`executor`]
//! workers; [`wasm`] is the executor over the wasmtime [`runtime`]; [`storage`] is the
//! durable journal and task table (SQLite); [`api`] is the HTTP API and [`server`] puts them
//! together for `handyman serve`; [`client`] is the CLI's side of the API.

pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod driver;
mod event_decode;
pub mod executor;
mod journal_codec;
pub mod metrics;
pub mod runtime;
pub mod server;
pub mod storage;
pub mod wasm;
