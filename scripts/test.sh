#!/usr/bin/env bash
# The test command: installs what is missing, checks formatting and lints, builds the guest
# images (cached outside the checkout), then runs every test, the real-guest tests included.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup-host.sh
# When the set-up scripts change, prove them on a fresh Debian 12 root (about 2 minutes); a pass
# is remembered by the scripts' hash.
fresh_key=$(cat scripts/setup-host.sh scripts/check-fresh-host.sh tests/setup-node.sh | sha256sum | cut -c1-16)
fresh_stamp="${EMBER_CACHE_DIR:-/var/cache/ember}/fresh-host/passed-$fresh_key"
if [ ! -f "$fresh_stamp" ]; then
    scripts/check-fresh-host.sh
    touch "$fresh_stamp"
fi
# The JS SDKs need Node >= 20.18.1 (Debian 12 has 18): a pinned Node, cached outside the checkout.
PATH="$(tests/setup-node.sh):$PATH"
export PATH
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
scripts/build.sh
export EMBER_AGENT_BIN="$PWD/target/release/ember-agent"
for template in base code-interpreter python node-20 deno; do
    target/release/ember template build "$template"
done
# A registry, skopeo and umoci for the OCI pull tests (ember-oci's and the template builds').
crates/oci/tests/setup.sh
# The official SDK as a test client, pinned.
if [ ! -x target/sdk-venv/bin/python ] || ! cmp -s tests/sdk/requirements.txt target/sdk-venv/requirements.txt; then
    rm -rf target/sdk-venv
    python3 -m venv target/sdk-venv
    target/sdk-venv/bin/pip install --quiet --disable-pip-version-check -r tests/sdk/requirements.txt
    cp tests/sdk/requirements.txt target/sdk-venv/requirements.txt
fi
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
# The official SDKs against a real `ember serve`.
EMBER_TEST_REGISTRIES=1 target/sdk-venv/bin/python -m pytest tests/serve -q -p no:cacheprovider --durations=15 | tee "$logs/pytest"
(cd tests/js && npm ci --silent --no-audit --no-fund && node --test) | tee "$logs/node"
# The code-interpreter server on the host, over real kernels (its own venv and Deno).
tests/interpreter/setup.sh
target/sdk-venv/bin/python -m pytest tests/interpreter -q -p no:cacheprovider --durations=5 | tee -a "$logs/pytest"
cargo test --workspace --locked 2>&1 | tee "$logs/cargo"

# One closing line for all suites.
passed=$(( $(grep -E '^test result:' "$logs/cargo" | awk '{s+=$4} END {print s+0}') \
    + $(grep -oE '[0-9]+ passed' "$logs/pytest" | awk '{s+=$1} END {print s+0}') \
    + $(grep -E '^# pass ' "$logs/node" | awk '{s+=$3} END {print s+0}') ))
failed=$(( $(grep -E '^test result:' "$logs/cargo" | awk '{s+=$6} END {print s+0}') \
    + $(grep -oE '[0-9]+ failed' "$logs/pytest" | awk '{s+=$1} END {print s+0}') \
    + $(grep -E '^# fail ' "$logs/node" | awk '{s+=$3} END {print s+0}') ))
echo "total: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
