#!/usr/bin/env bash
# Builds the guest SDK and every example handler into plugins/dist/KIND.wasm, then checks that
# each output is a valid component exporting the handyman:task handler world.
#
#   bash plugins/build.sh            # build, validate
#   bash plugins/build.sh --test     # also run the SDK's and examples' unit tests (native)
#   bash plugins/build.sh --smoke    # also run smoke.py on the built components
#
# Rust guests: with rustup's wasm32-wasip2 target installed, a plain `cargo build` for it.
# Otherwise (the usual case on these machines, see shared/TOOLCHAIN.md) Debian's rustc 1.96
# with -Zbuild-std for wasm32-unknown-unknown, linked by the wasm-component-ld that ships in
# rustup's stable toolchain. Run setup-toolchain.sh once first on a fresh machine.
#
# Re-running is cheap: cargo is incremental as long as the environment below stays the same
# (any change to RUSTFLAGS or the linker rebuilds std, ~2-4 minutes), and the Python
# component is rebuilt only when its sources or the WIT changed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
wit_dir="$here/../wit"
dist="$here/dist"

RUST_KINDS=(noop echo flaky table-copy spin memory-hog panic stack-overflow)
PY_KINDS=(py-echo)

run_tests=0
run_smoke=0
for arg in "$@"; do
    case "$arg" in
    --test) run_tests=1 ;;
    --smoke) run_smoke=1 ;;
    *)
        echo "usage: $0 [--test] [--smoke]" >&2
        exit 2
        ;;
    esac
done

die() {
    echo "build.sh: $*" >&2
    exit 1
}

need() {
    command -v "$1" >/dev/null 2>&1 || die "$1 not found; run plugins/setup-toolchain.sh first"
}

need wasm-tools
need componentize-py
mkdir -p "$dist"

# --- Rust guests -------------------------------------------------------------------------

# Whatever RUSTFLAGS the caller has would change cargo's fingerprints and rebuild std.
unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_RUSTFLAGS

if command -v rustup >/dev/null 2>&1 &&
    rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
    target=wasm32-wasip2
    echo "== Rust guests: cargo build --target $target"
    cargo build --release --locked --target "$target"
else
    target=wasm32-unknown-unknown
    [ -x /usr/bin/rustc ] && [ -x /usr/bin/cargo ] || die "Debian's rustc-web/cargo-web are missing"
    [ -d /usr/lib/rustlib/src/rust/library ] || die "Debian's rust-web-src is missing"
    need rustup
    tb="$(rustup run stable rustc --print sysroot)/lib/rustlib/x86_64-unknown-linux-gnu/bin"
    [ -x "$tb/wasm-component-ld" ] || die "no wasm-component-ld in $tb"
    [ -x "$tb/gcc-ld/wasm-ld" ] || die "no wasm-ld in $tb/gcc-ld"
    echo "== Rust guests: Debian rustc + -Zbuild-std, target $target"
    export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1
    export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER="$tb/wasm-component-ld"
    export PATH="$tb/gcc-ld:$PATH"
    /usr/bin/cargo build --release --locked -Zbuild-std=std,panic_abort --target "$target"
fi

for kind in "${RUST_KINDS[@]}"; do
    built="target/$target/release/handyman_example_${kind//-/_}.wasm"
    [ -f "$built" ] || die "cargo did not produce $built"
    # cp -p keeps the timestamp, so an unchanged handler looks unchanged downstream too.
    if ! cmp -s "$built" "$dist/$kind.wasm"; then
        cp -p "$built" "$dist/$kind.wasm"
    fi
done

# --- Python guests -----------------------------------------------------------------------

for kind in "${PY_KINDS[@]}"; do
    src="examples/$kind"
    out="$dist/$kind.wasm"
    # componentize-py takes 10-60 s and is not incremental: skip it when nothing it reads
    # changed since the last output.
    if [ -f "$out" ] &&
        [ -z "$(find "$src" "$wit_dir" -newer "$out" -type f ! -path '*/__pycache__/*' -print -quit)" ]; then
        echo "== $kind: up to date"
        continue
    fi
    echo "== $kind: componentize-py"
    componentize-py -d "$wit_dir" -w handler componentize -p "$src" app -o "$out.tmp"
    mv "$out.tmp" "$out"
done

# --- Validation ----------------------------------------------------------------------------

echo "== validating dist/"
for kind in "${RUST_KINDS[@]}" "${PY_KINDS[@]}"; do
    wasm="$dist/$kind.wasm"
    wasm-tools validate "$wasm" || die "$kind.wasm does not validate"
    world="$(wasm-tools component wit "$wasm")" || die "$kind.wasm is not a component"
    grep -Eq '^  export run: func\(task: task\) -> result<outcome, failure>;$' <<<"$world" ||
        die "$kind.wasm does not export run(task) -> result<outcome, failure>"
    grep -Eq '^  export cleanup: func\(context: list<context-entry>, reason: cleanup-reason\) -> result<_, string>;$' <<<"$world" ||
        die "$kind.wasm does not export cleanup(context, reason)"
    grep -Eq '^  use handyman:task/types@0\.1\.0\.\{' <<<"$world" ||
        die "$kind.wasm does not take its types from handyman:task/types@0.1.0"
    # A Rust guest must import nothing but the handler world; WASI would mean the recipe
    # silently changed target.
    if [ "$target" = wasm32-unknown-unknown ] && [[ " ${RUST_KINDS[*]} " == *" $kind "* ]] &&
        grep -Eq '^  import wasi:' <<<"$world"; then
        die "$kind.wasm imports WASI, but a wasm32-unknown-unknown guest should not"
    fi
    printf '   %-20s %9d bytes\n' "$kind.wasm" "$(stat -c %s "$wasm")"
done

if [ "$run_tests" = 1 ]; then
    echo "== unit tests (native)"
    if [ "$target" = wasm32-wasip2 ]; then
        cargo test --locked
    else
        # The same rustc as the wasm build; the bindings' import stubs compile natively too.
        /usr/bin/cargo test --locked
    fi
fi

if [ "$run_smoke" = 1 ]; then
    echo "== smoke test"
    python3 smoke.py
fi

echo "== done: $(ls "$dist" | wc -l) components in $dist"
