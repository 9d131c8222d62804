"""The runtimes Ember ships as named templates, through the official SDK (`e2b`, pinned).

What is checked: `python` (and its seed name `python-3.13`) runs CPython 3.13 and `python` is
python3; `node-20` (and `nodejs-20`) runs Node.js 20 with npm; `deno` (and `deno-2`) runs Deno 2
(`deno eval`); `base` is Debian trixie. Each runtime is built on its first use (scripts/test.sh
builds the images beforehand, so here only the template snapshot is made on first use). With
EMBER_TEST_REGISTRIES=1 (CI sets it), a small package is installed from the package registries
inside each runtime's sandbox, as an agent would: `pip install` (no flags), `npm install`, and
Deno's `npm:` import. Those are the only hosts these tests reach outside this machine.

Run: target/sdk-venv/bin/python -m pytest tests/serve/test_runtimes.py -q -p no:cacheprovider
"""

import os

import pytest
from e2b import CommandExitException, Sandbox

# The first create of a runtime snapshots it (a boot under TCG); later ones restore.
CREATE_TIMEOUT = 900
REGISTRIES = pytest.mark.skipif(os.environ.get("EMBER_TEST_REGISTRIES") != "1",
                                reason="talks to the real package registries: set EMBER_TEST_REGISTRIES=1")


def sh(sbx, cmd, timeout=120):
    """Runs `cmd` in the guest: (exit code, stdout + stderr), whatever the exit code."""
    try:
        r = sbx.commands.run(cmd, timeout=timeout)
    except CommandExitException as e:
        return e.exit_code, e.stdout + e.stderr
    return r.exit_code, r.stdout + r.stderr


def create(name):
    return Sandbox.create(name, request_timeout=CREATE_TIMEOUT, timeout=600)


@pytest.mark.parametrize("name", ["python", "python-3.13"])
def test_python_is_3_13(daemon, name):
    s = create(name)
    try:
        # A venv with pip runs ensurepip: about a minute under TCG, past two under CI's load.
        # venv itself and pip are what a user needs; both are checked without that install.
        rc, out = sh(s, "python3 --version && python --version && python3 -m venv --without-pip /tmp/v"
                        " && /tmp/v/bin/python -c 'import sys; assert sys.prefix == \"/tmp/v\"'"
                        " && python3 -m pip --version && python3 -c 'import ensurepip'")
        assert rc == 0, out
        lines = out.splitlines()
        assert lines[0].startswith("Python 3.13.") and lines[1].startswith("Python 3.13."), out
    finally:
        s.kill()


@pytest.mark.parametrize("name", ["node-20", "nodejs-20"])
def test_node_is_20(daemon, name):
    s = create(name)
    try:
        rc, out = sh(s, "node --version && npm --version && node -e 'console.log(6 * 7)'")
        assert rc == 0, out
        lines = out.splitlines()
        assert lines[0].startswith("v20."), out
        assert lines[-1] == "42", out
    finally:
        s.kill()


@pytest.mark.parametrize("name", ["deno", "deno-2"])
def test_deno_evals(daemon, name):
    s = create(name)
    try:
        rc, out = sh(s, "deno --version && deno eval 'console.log([1, 2, 3].map((x) => x * 2).join(\",\"))'")
        assert rc == 0, out
        assert out.splitlines()[0].startswith("deno 2."), out
        assert out.splitlines()[-1] == "2,4,6", out
    finally:
        s.kill()


def test_base_is_trixie(daemon):
    s = create("base")
    try:
        rc, out = sh(s, ". /etc/os-release && echo $VERSION_CODENAME && python3 --version && node --version")
        assert rc == 0, out
        codename, python, node = out.splitlines()[:3]
        assert codename == "trixie" and python.startswith("Python 3.13.") and node.startswith("v20."), out
    finally:
        s.kill()


def test_an_unknown_runtime_is_a_4xx(daemon):
    from e2b import SandboxException

    with pytest.raises(SandboxException) as e:
        Sandbox.create("python-3.12", request_timeout=60)
    assert "python-3.12" in str(e.value), e.value


@REGISTRIES
def test_pip_install_in_python(daemon):
    s = create("python")
    try:
        rc, out = sh(s, "pip install --no-cache-dir --disable-pip-version-check six", timeout=900)
        assert rc == 0, out[-3000:]
        rc, out = sh(s, "python -c 'import six, sys; print(six.__file__)'")
        assert rc == 0 and "/home/user/.local/" in out, out
    finally:
        s.kill()


@REGISTRIES
def test_npm_install_in_node_20(daemon):
    s = create("node-20")
    try:
        rc, out = sh(s, "mkdir -p ~/app && cd ~/app && npm install --no-audit --no-fund is-number@7", timeout=900)
        assert rc == 0, out[-3000:]
        rc, out = sh(s, "cd ~/app && node -e 'console.log(require(\"is-number\")(5))'")
        assert rc == 0 and out.strip() == "true", out
    finally:
        s.kill()


@REGISTRIES
def test_npm_import_in_deno(daemon):
    s = create("deno")
    try:
        rc, out = sh(s, "cd ~ && deno eval \"import isNumber from 'npm:is-number@7'; console.log(isNumber(5))\"",
                     timeout=900)
        # stdout comes first in `out`, then Deno's download lines on stderr.
        assert rc == 0 and out.splitlines()[0] == "true", out[-3000:]
    finally:
        s.kill()
