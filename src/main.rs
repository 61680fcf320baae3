//! The `handyman` binary: operators' server and CLI client. All of it lives in `handyman-host`.

fn main() -> std::process::ExitCode {
    handyman_host::cli::main()
}
