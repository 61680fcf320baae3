//! The `handyman` command line.

use std::process::ExitCode;

/// Entry point of the `handyman` binary.
pub fn main() -> ExitCode {
    eprintln!("handyman: not built yet");
    ExitCode::FAILURE
}
