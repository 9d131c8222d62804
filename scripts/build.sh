#!/usr/bin/env bash
# Builds `ember` and the guest agent in release mode. The agent is linked statically
# (glibc, crt-static) so it runs on any guest libc; it is installed beside `ember`, where
# `ember` looks for it.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
    echo "build: cargo not found: install a Rust toolchain (1.88 or newer) with rustup" >&2
    exit 1
fi

cargo build --release --locked -p ember
RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked -p ember-agent --target x86_64-unknown-linux-gnu
install -m 0755 target/x86_64-unknown-linux-gnu/release/ember-agent target/release/ember-agent
