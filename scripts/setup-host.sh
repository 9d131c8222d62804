#!/usr/bin/env bash
# Installs the Debian packages Ember needs on the host (Debian 12), once: QEMU, the kernel
# source and its build tools, debootstrap, e2fsprogs and iproute2. Idempotent and quiet when
# everything is there.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
    echo "setup-host: run as root (Ember creates network namespaces, tap devices and VMs)" >&2
    exit 1
fi

packages=(
    qemu-system-x86 qemu-utils             # the VMM and qemu-img (same release: apt removes a mismatched pair)
    linux-source-6.1 make gcc bc bison flex libelf-dev libssl-dev xz-utils perl   # guest kernel
    debootstrap e2fsprogs                  # guest root filesystem
    iproute2                               # network namespaces and taps
    python3 python3-venv                   # test clients
)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ! command -v qemu-img >/dev/null || ! command -v qemu-system-x86_64 >/dev/null; then
    missing+=(qemu-system-x86 qemu-utils)
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup-host: installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" qemu-system-x86 qemu-utils >/dev/null
fi

# QEMU drops to this unprivileged account once it has opened its devices.
if ! id ember-qemu >/dev/null 2>&1; then
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin ember-qemu
fi

if ! command -v cargo >/dev/null; then
    echo "setup-host: cargo not found: install a Rust toolchain (1.80 or newer) with rustup" >&2
    exit 1
fi
