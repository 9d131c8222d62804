"""Fixtures for driving ember-agent with the official E2B Python SDK.

Two modes:
- host (default): starts `ember-agent serve` on 127.0.0.1 as an ordinary process, with a
  scratch account database whose `user` (uid 1000) and `root` have homes in a scratch dir.
- guest: AGENT_URL points at an agent inside a sandbox (the Rust harness runs pytest inside the
  sandbox's network namespace).

Either way the agent is initialised as the host daemon does it (`POST /init` with an access
token and sandbox env vars), and tests get an SDK `Sandbox` object built the way
`Sandbox.create` builds one, pointed at the agent with envd version 0.6.13 and that token.
"""

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time

import httpx
import pytest
from e2b import Sandbox
from e2b.connection_config import ConnectionConfig
from packaging.version import Version

ENVD_VERSION = "0.6.13"
SANDBOX_ENV = {"EMBER_SANDBOX_ENV": "from-init", "SHARED": "sandbox"}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_health(url, proc=None, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"agent exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 204:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"agent at {url} did not answer /health")


def _scratch_root():
    root = tempfile.mkdtemp(prefix="ember-agent-test-")
    os.chmod(root, 0o755)
    os.makedirs(f"{root}/etc")
    os.makedirs(f"{root}/root", mode=0o700)
    os.makedirs(f"{root}/home/user")
    os.chown(f"{root}/home/user", 1000, 1000)
    with open(f"{root}/etc/passwd", "w") as f:
        f.write(f"root:x:0:0:root:{root}/root:/bin/bash\n")
        f.write(f"user:x:1000:1000::{root}/home/user:/bin/bash\n")
    with open(f"{root}/etc/group", "w") as f:
        f.write("root:x:0:\nsudo:x:27:user\nuser:x:1000:\n")
    return root


@pytest.fixture(scope="session")
def agent():
    """(url, token, mode) of an initialised agent."""
    token = secrets.token_hex(16)
    url = os.environ.get("AGENT_URL")
    proc = root = None
    if url:
        mode = "guest"
        _wait_health(url)
    else:
        mode = "host"
        binary = os.environ["AGENT_BIN"]
        root = _scratch_root()
        url = f"http://127.0.0.1:{_free_port()}"
        proc = subprocess.Popen(
            [binary, "serve", "--listen", url.removeprefix("http://"), "--users-root", root],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "EMBER_AGENT_LOG": "warn"},
        )
        _wait_health(url, proc)
    r = httpx.post(f"{url}/init", json={"accessToken": token, "envVars": SANDBOX_ENV, "defaultUser": "user"})
    assert r.status_code == 204, r.text
    yield {"url": url, "token": token, "mode": mode}
    if proc is not None:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


def make_sandbox(agent, token="__default__"):
    token = agent["token"] if token == "__default__" else token
    headers = {"E2b-Sandbox-Id": "test", "E2b-Sandbox-Port": "49983"}
    if token:
        headers["X-Access-Token"] = token
    config = ConnectionConfig(sandbox_url=agent["url"], api_key="e2b_" + "0" * 40, extra_sandbox_headers=headers)
    return Sandbox(
        sandbox_id="test",
        sandbox_domain=None,
        envd_version=Version(ENVD_VERSION),
        envd_access_token=token,
        traffic_access_token=None,
        connection_config=config,
    )


@pytest.fixture
def sbx(agent):
    return make_sandbox(agent)


@pytest.fixture
def home(sbx):
    return sbx.commands.run("echo $HOME").stdout.strip()


@pytest.fixture
def workdir(sbx, home, request):
    """A fresh directory under the user's home for one test."""
    path = f"{home}/t-{request.node.name[:40]}-{secrets.token_hex(3)}"
    sbx.files.make_dir(path)
    yield path
    sbx.files.remove(path)
