#!/usr/bin/env bash
# Sets up this machine for Handyman and builds it: the Debian and pip packages the WASM
# guests need (plugins/setup-toolchain.sh), the example handlers (plugins/build.sh), and the
# Rust workspace. Safe to re-run: each step is incremental.
#
#   ./setup.sh          set up and build
#   ./setup.sh run      ... then start `handyman serve` on its embedded defaults, with the
#                       example handlers, on http://127.0.0.1:7411 (Ctrl-C stops it)
#   ./setup.sh test     ... then run the whole test suite (what CI runs)
set -euo pipefail
cd "$(dirname "$0")"

mode="${1:-build}"
case "$mode" in
    build | run | test) ;;
    *)
        echo "usage: $0 [run|test]" >&2
        exit 2
        ;;
esac

step() { echo "== setup: $*"; }

step "guest toolchain (Debian's Rust with std sources, componentize-py, wasm-tools)"
bash plugins/setup-toolchain.sh

step "example handlers -> plugins/dist/KIND.wasm"
bash plugins/build.sh

case "$mode" in
    build)
        step "workspace (release)"
        cargo build --release --locked --bins
        ;;
    run)
        step "workspace (release)"
        cargo build --release --locked --bins
        step "handyman serve (embedded defaults) with plugins/dist"
        exec target/release/handyman serve --plugins plugins/dist
        ;;
    test)
        step "tests: cargo test --workspace"
        export HANDYMAN_PLUGINS_DIR="$PWD/plugins/dist"
        cargo test --workspace --locked
        ;;
esac
