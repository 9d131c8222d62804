"""Fixtures for driving ember-agent with the official E2B Python SDK.

Two modes:
- host (default): starts `ember-agent serve` on 127.0.0.1 as an ordinary process, with a
  scratch account database whose `user` (uid 1000) and `root` have homes in a scratch dir, and
  its state file (what `/init` set, kept across restarts) in a scratch dir of its own.
- guest: AGENT_URL points at an agent inside a sandbox (the Rust harness runs pytest inside the
  sandbox's network namespace). If the host already initialised that agent, AGENT_TOKEN is the
  token it set: the suite initialises it again with that token and keeps it.

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
import e2b
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


def _start_host_agent(agent):
    """Starts `ember-agent serve` for the host-mode `agent` (again, after a restart)."""
    proc = subprocess.Popen(
        [
            os.environ["AGENT_BIN"],
            "serve",
            "--listen",
            agent["url"].removeprefix("http://"),
            "--users-root",
            agent["root"],
            "--state-file",
            agent["state_file"],
        ],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "EMBER_AGENT_LOG": "warn"},
    )
    agent["proc"] = proc
    _wait_health(agent["url"], proc)


def restart_host_agent(agent):
    """Kills the host-mode agent (SIGKILL, as a crash or the OOM killer would) and starts a new
    one on the same address and state file."""
    agent["proc"].kill()
    agent["proc"].wait(timeout=10)
    _start_host_agent(agent)


@pytest.fixture(scope="session")
def agent():
    """An initialised agent: {url, token, mode}, and in host mode {proc, root, state_file}."""
    current = os.environ.get("AGENT_TOKEN") or None
    token = current or secrets.token_hex(16)
    url = os.environ.get("AGENT_URL")
    state_dir = None
    if url:
        info = {"url": url, "token": token, "mode": "guest"}
        _wait_health(url)
    else:
        state_dir = tempfile.mkdtemp(prefix="ember-agent-state-")
        info = {
            "url": f"http://127.0.0.1:{_free_port()}",
            "token": token,
            "mode": "host",
            "root": _scratch_root(),
            "state_file": f"{state_dir}/agent.json",
        }
        _start_host_agent(info)
    headers = {"X-Access-Token": current} if current else {}
    body = {"accessToken": token, "envVars": SANDBOX_ENV, "defaultUser": "user"}
    r = httpx.post(f"{info['url']}/init", json=body, headers=headers)
    assert r.status_code == 204, r.text
    yield info
    if info["mode"] == "host":
        info["proc"].terminate()
        info["proc"].wait(timeout=10)
        shutil.rmtree(info["root"], ignore_errors=True)
        shutil.rmtree(state_dir, ignore_errors=True)


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


def assert_fails_closed(agent):
    """The agent (just restarted) refuses calls without its token and serves them with it, with
    the sandbox's env vars."""
    url, token = agent["url"], agent["token"]
    h = httpx.get(f"{url}/health")
    assert h.status_code == 204 and h.headers["x-ember-initialised"] == "true"
    for t in (None, "wrong-token"):
        with pytest.raises(e2b.AuthenticationException):
            make_sandbox(agent, token=t).commands.run("true")
        headers = {"X-Access-Token": t} if t else {}
        assert httpx.get(f"{url}/envs", headers=headers).status_code == 401
        assert httpx.get(f"{url}/metrics", headers=headers).status_code == 401
        assert httpx.post(f"{url}/init", json={"accessToken": "stolen"}, headers=headers).status_code == 401
    # The token and the sandbox's env vars survived.
    sbx = make_sandbox(agent)
    assert sbx.commands.run("echo $EMBER_SANDBOX_ENV").stdout == "from-init\n"
    r = httpx.get(f"{url}/envs", headers={"X-Access-Token": token})
    assert r.status_code == 200 and r.json()["EMBER_SANDBOX_ENV"] == "from-init"
