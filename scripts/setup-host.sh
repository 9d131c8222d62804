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
    iproute2                               # network namespaces, taps and veths
    nftables                               # sandbox egress: NAT and filtering (nft)
    python3 python3-venv                   # test clients
)
missing=()
for p in "${packages[@]}"; do
    case "$p" in qemu-system-x86|qemu-utils) continue ;; esac   # handled below, as a pair
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
installed_version() { { dpkg-query -W -f='${Status} ${Version}' "$1" 2>/dev/null || true; } | sed -n 's/^install ok installed //p'; }
candidate_version() { { apt-cache policy "$1" 2>/dev/null || true; } | sed -n 's/^ *Candidate: //p'; }

# qemu-system-x86 and qemu-utils must come from the same QEMU release: a newer qemu-utils (from
# bookworm-backports, as some images ship) Breaks the qemu-system-common that qemu-system-x86
# needs, and apt keeps the installed, newer one. So both are pinned to the version apt picks for
# qemu-system-x86 (Debian 12's, unless the admin pinned another), downgrading qemu-utils where
# needed.
qemu_system=$(installed_version qemu-system-x86)
qemu_utils=$(installed_version qemu-utils)
need_qemu=0
if [ -z "$qemu_system" ] || [ "$qemu_system" != "$qemu_utils" ] \
    || ! command -v qemu-img >/dev/null || ! command -v qemu-system-x86_64 >/dev/null; then
    need_qemu=1
fi
if [ ${#missing[@]} -gt 0 ] || [ "$need_qemu" = 1 ]; then
    apt-get update -qq
fi
version=$(candidate_version qemu-system-x86)
if [ "$need_qemu" = 0 ] && [ -n "$version" ] && [ "$version" != "(none)" ] && [ "$qemu_system" != "$version" ]; then
    need_qemu=1   # a matching pair, but not the release apt would install (e.g. both from backports)
fi
if [ "$need_qemu" = 1 ]; then
    if [ -z "$version" ] || [ "$version" = "(none)" ]; then
        echo "setup-host: no qemu-system-x86 package in the apt sources (Debian 12 main is needed)" >&2
        exit 1
    fi
    if [ -n "$qemu_utils" ] && [ "$qemu_utils" != "$version" ]; then
        echo "setup-host: qemu-utils $qemu_utils does not match qemu-system-x86 $version:" \
            "installing qemu-utils $version instead (a downgrade where the installed one is newer)" >&2
    fi
    echo "setup-host: installing qemu-system-x86=$version qemu-utils=$version" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends --allow-downgrades \
        "qemu-system-x86=$version" "qemu-utils=$version" "qemu-system-common=$version" >/dev/null
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup-host: installing ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# QEMU drops to this unprivileged account once it has opened its devices.
if ! id ember-qemu >/dev/null 2>&1; then
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin ember-qemu
fi
