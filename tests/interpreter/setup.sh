#!/usr/bin/env bash
# Makes the host environment of the interpreter tests (idempotent): the kernels' Python venv
# (target/interp-venv, from the system Python so that an unprivileged kernel user can run it)
# with tests/interpreter/requirements.txt, and Deno from npm (target/interp-deno). Then:
#   target/sdk-venv/bin/python -m pytest tests/interpreter     (as root)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="$root/target/interp-venv"
if [ ! -x "$venv/bin/python" ]; then
  /usr/bin/python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q -r "$root/tests/interpreter/requirements.txt"
if [ ! -x "$root/target/interp-deno/node_modules/@deno/linux-x64-glibc/deno" ]; then
  npm install --silent --prefix "$root/target/interp-deno" deno@2.9.6
fi
