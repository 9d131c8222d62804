#!/bin/sh
# Installs what ember-oci's integration test (tests/registry.rs) needs, from Debian's packages:
# a registry to run on 127.0.0.1 (docker-registry), skopeo to push, umoci to build OCI images,
# and htpasswd (apache2-utils) for the registry's basic auth. Safe to run again.
set -eu
missing=""
for pair in docker-registry:docker-registry skopeo:skopeo umoci:umoci htpasswd:apache2-utils; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing="$missing ${pair#*:}"
done
if [ -z "$missing" ]; then
    echo "ember-oci test tools: all present"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "ember-oci test tools missing:$missing (run this script as root to install them)" >&2
    exit 1
fi
echo "installing:$missing"
apt-get update -qq
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
