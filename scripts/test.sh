#!/usr/bin/env bash
# The test command: installs what is missing, checks formatting and lints, builds the guest
# images (cached outside the checkout), then runs every test, the real-guest tests included.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup-host.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
scripts/build.sh
export EMBER_AGENT_BIN="$PWD/target/release/ember-agent"
target/release/ember template build base
# The official SDK as a test client, pinned.
if [ ! -x target/sdk-venv/bin/python ] || ! cmp -s tests/sdk/requirements.txt target/sdk-venv/requirements.txt; then
    rm -rf target/sdk-venv
    python3 -m venv target/sdk-venv
    target/sdk-venv/bin/pip install --quiet --disable-pip-version-check -r tests/sdk/requirements.txt
    cp tests/sdk/requirements.txt target/sdk-venv/requirements.txt
fi
# The official SDKs against a real `ember serve`.
target/sdk-venv/bin/python -m pytest tests/serve -q -p no:cacheprovider
(cd tests/js && npm ci --silent --no-audit --no-fund && node --test)
cargo test --workspace --locked
