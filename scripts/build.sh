#!/usr/bin/env bash
# Builds `ember` and the guest binaries (the agent, the code-interpreter server) in release
# mode. The guest binaries are linked statically (glibc, crt-static) so they run on any guest
# libc; they are installed beside `ember`, where `ember` looks for them.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
    echo "build: cargo not found: install a Rust toolchain (1.89 or newer) with rustup" >&2
    exit 1
fi

cargo build --release --locked -p ember
RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked -p ember-agent -p ember-interpreter --target x86_64-unknown-linux-gnu
for guest in ember-agent ember-interpreter; do
    install -m 0755 "target/x86_64-unknown-linux-gnu/release/$guest" "target/release/$guest"
done
