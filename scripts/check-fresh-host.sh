#!/usr/bin/env bash
# Proves that scripts/setup-host.sh works on a fresh Debian 12 machine without trusting this
# one: builds a clean Debian 12 root with debootstrap in a temporary directory, copies the
# checkout in, and inside it (chroot):
#   1. bare Debian 12: runs setup-host.sh, then checks qemu-system-x86_64 and qemu-img run
#      and come from the same QEMU release;
#   2. the state of our usual image: installs qemu-utils from bookworm-backports (newer than
#      qemu-system-x86, which it Breaks), runs setup-host.sh again, and checks the same;
#   3. runs setup-host.sh once more, which must change nothing;
#   4. the tests' Node (tests/setup-node.sh): bare Debian 12 has no npm and Node 18, and the
#      script must still give a Node the JS SDKs accept (fetched from the npm registry).
# Needs root and the network to the Debian mirror. Downloaded packages are cached in
# EMBER_CACHE_DIR/fresh-host/debs so that a second run is faster. Exits non-zero on failure.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "check-fresh-host: run as root (debootstrap and chroot)" >&2
    exit 1
fi
mirror=${EMBER_DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${EMBER_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
cache=${EMBER_CACHE_DIR:-/var/cache/ember}/fresh-host
mkdir -p "$cache/debs"
chmod 0700 "$cache"
if ! command -v debootstrap >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
fi

root=$(mktemp -d /var/tmp/ember-fresh-host.XXXXXX)
mounted=()
cleanup() {
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
        umount -l "${mounted[$i]}" 2>/dev/null || true
    done
    rm -rf --one-file-system "$root"
}
trap cleanup EXIT

step() { printf '==> check-fresh-host: %s\n' "$*" >&2; }
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"; }

step "debootstrap bookworm (minbase) into $root"
started=$(date +%s)
debootstrap --variant=minbase --cache-dir="$cache/debs" bookworm "$root" "$mirror" >"$root.log" 2>&1 || {
    tail -30 "$root.log" >&2
    rm -f "$root.log"
    exit 1
}
rm -f "$root.log"

# Debian 12 as our usual image has it: main, updates and security; backports added for step 2.
cat >"$root/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $security bookworm-security main
EOF
cp /etc/resolv.conf "$root/etc/resolv.conf"
# No services start inside the chroot.
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 0755 "$root/usr/sbin/policy-rc.d"
for fs in proc sys dev dev/pts; do
    mkdir -p "$root/$fs"
    mount --bind "/$fs" "$root/$fs"
    mounted+=("$root/$fs")
done
# Packages downloaded inside the root are kept for the next run.
mkdir -p "$root/var/cache/apt/archives"
mount --bind "$cache/debs" "$root/var/cache/apt/archives"
mounted+=("$root/var/cache/apt/archives")

step "copying the checkout (tracked files as they are in the work tree)"
mkdir -p "$root/ember"
git ls-files -z --cached --others --exclude-standard |
    tar --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -xf - -C "$root/ember"

check_qemu() {
    local what=$1 sys utils
    in_root qemu-system-x86_64 --version | head -1
    in_root qemu-img --version | head -1
    in_root nft --version | head -1 || { echo "check-fresh-host: FAILED ($what): no nft (package nftables)" >&2; exit 1; }
    sys=$(in_root dpkg-query -W -f='${Version}' qemu-system-x86)
    utils=$(in_root dpkg-query -W -f='${Version}' qemu-utils)
    if [ "$sys" != "$utils" ]; then
        echo "check-fresh-host: FAILED ($what): qemu-system-x86 $sys but qemu-utils $utils" >&2
        exit 1
    fi
    case "$sys" in
    1:7.2*) ;;
    *)
        echo "check-fresh-host: FAILED ($what): expected Debian 12's QEMU 7.2, got $sys" >&2
        exit 1
        ;;
    esac
    step "$what: ok (qemu-system-x86 and qemu-utils $sys)"
}

step "1. bare Debian 12: scripts/setup-host.sh"
in_root bash -c 'cd /ember && scripts/setup-host.sh'
check_qemu "bare Debian 12"

step "2. the usual image's state: no QEMU but qemu-utils from bookworm-backports; then scripts/setup-host.sh"
in_root env DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq \
    qemu-system-x86 qemu-system-common qemu-system-data qemu-utils >/dev/null
echo "deb $mirror bookworm-backports main" >"$root/etc/apt/sources.list.d/backports.list"
in_root apt-get update -qq
in_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    -t bookworm-backports qemu-utils >/dev/null
if in_root dpkg-query -W -f='${Status}' qemu-system-x86 2>/dev/null | grep -q 'install ok installed'; then
    echo "check-fresh-host: FAILED to set up the image's state: qemu-system-x86 is installed" >&2
    exit 1
fi
backported=$(in_root dpkg-query -W -f='${Version}' qemu-utils)
case "$backported" in
*bpo12*) step "qemu-utils $backported installed from backports" ;;
*)
    echo "check-fresh-host: FAILED: expected a backported qemu-utils, got $backported" >&2
    exit 1
    ;;
esac
in_root bash -c 'cd /ember && scripts/setup-host.sh'
check_qemu "backported qemu-utils"

step "3. setup-host.sh again: nothing to do"
out=$(in_root bash -c 'cd /ember && scripts/setup-host.sh' 2>&1)
if [ -n "$out" ]; then
    echo "check-fresh-host: FAILED: a second run of setup-host.sh was not quiet:" >&2
    echo "$out" >&2
    exit 1
fi
in_root id ember-qemu >/dev/null

step "4. tests/setup-node.sh on a root without npm"
if in_root sh -c 'command -v npm' >/dev/null; then
    echo "check-fresh-host: FAILED to set up: npm is already in the root" >&2
    exit 1
fi
# The host's CA bundle, for a host whose HTTPS goes through a TLS-inspecting proxy.
cp /etc/ssl/certs/ca-certificates.crt "$root/tmp/host-ca.pem"
node_bin=$(in_root env npm_config_cafile=/tmp/host-ca.pem EMBER_CACHE_DIR=/var/tmp/ember-cache \
    bash -c 'cd /ember && tests/setup-node.sh')
node_version=$(in_root "$node_bin/node" --version)
case "$node_version" in
v22.*) step "node $node_version at $node_bin" ;;
*)
    echo "check-fresh-host: FAILED: tests/setup-node.sh gave node $node_version" >&2
    exit 1
    ;;
esac
step "passed in $(($(date +%s) - started)) s"
