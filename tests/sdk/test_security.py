"""The access token and signed file URLs, including the exact error bodies the SDK tests for, and
an agent that keeps refusing calls without its token after it is killed and restarted."""

import os
import socket
import stat
import time
from urllib.parse import urlparse

import httpx
import pytest
from e2b import AuthenticationException

from conftest import assert_fails_closed, make_sandbox, restart_host_agent


def test_rpcs_and_envs_need_the_token(agent):
    wrong = make_sandbox(agent, token="wrong-token")
    with pytest.raises(AuthenticationException):
        wrong.commands.run("true")
    assert httpx.get(f"{agent['url']}/envs").status_code == 401
    r = httpx.get(f"{agent['url']}/envs", headers={"X-Access-Token": agent["token"]})
    assert r.status_code == 200 and r.json()["EMBER_SANDBOX_ENV"] == "from-init"
    assert httpx.get(f"{agent['url']}/health").status_code == 204


def test_a_refused_rpc_still_being_sent_reads_its_refusal(agent):
    """A client still writing its request body when the agent refuses it gets the refusal, not a
    reset connection (the SDK then raises AuthenticationException, not a broken pipe)."""
    u = urlparse(agent["url"])
    body = b"\0" * 48 * 1024
    head = (
        "POST /process.Process/Start HTTP/1.1\r\nHost: x\r\n"
        "Content-Type: application/connect+json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection((u.hostname, u.port), timeout=10) as s:
        s.sendall(head)
        time.sleep(0.3)  # the agent has answered by now
        for i in range(0, len(body), 8192):
            s.sendall(body[i : i + 8192])  # a closed connection fails here with a broken pipe
            time.sleep(0.05)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = s.recv(4096)
            assert chunk, f"connection closed after {answer!r}"
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer  # Connect streams carry errors in the body


def test_init_needs_the_current_token(agent):
    r = httpx.post(f"{agent['url']}/init", json={"accessToken": "stolen"})
    assert r.status_code == 401
    r = httpx.post(f"{agent['url']}/init", json={}, headers={"X-Access-Token": agent["token"]})
    assert r.status_code == 204


def test_signed_download_and_upload_urls(sbx, workdir):
    sbx.files.write(f"{workdir}/s.txt", "signed")
    url = sbx.download_url(f"{workdir}/s.txt")
    assert "signature=v1_" in url
    r = httpx.get(url)
    assert r.status_code == 200 and r.text == "signed"
    up = sbx.upload_url(f"{workdir}/up.txt")
    r = httpx.post(up, files={"file": ("up.txt", b"uploaded")})
    assert r.status_code == 200, r.text
    assert sbx.files.read(f"{workdir}/up.txt") == "uploaded"


def test_bad_signatures_are_refused_with_envds_messages(sbx, workdir):
    sbx.files.write(f"{workdir}/s.txt", "signed")
    url = sbx.download_url(f"{workdir}/s.txt")
    assert httpx.get(url.replace("signature=v1_", "signature=v1_x")).json() == {"code": 401, "message": "invalid signature"}
    bare = url.split("&signature=")[0]
    assert httpx.get(bare).json() == {"code": 401, "message": "missing signature query parameter"}
    expired = sbx.download_url(f"{workdir}/s.txt", use_signature_expiration=-60)
    r = httpx.get(expired)
    assert r.status_code == 401
    assert r.json() == {"code": 401, "message": "signature is already expired"}
    # A signature for reading does not allow writing.
    r = httpx.post(url, files={"file": ("s.txt", b"overwrite")})
    assert r.status_code == 401
    assert sbx.files.read(f"{workdir}/s.txt") == "signed"


def test_metrics_are_real(agent):
    m = httpx.get(f"{agent['url']}/metrics", headers={"X-Access-Token": agent["token"]}).json()
    assert m["cpu_count"] >= 1
    assert 0 <= m["cpu_used_pct"] <= 100
    assert 0 < m["mem_used"] < m["mem_total"]
    assert 0 < m["disk_used"] < m["disk_total"]


def test_health_says_the_agent_is_initialised(agent):
    r = httpx.get(f"{agent['url']}/health")
    assert r.status_code == 204 and r.headers["x-ember-initialised"] == "true"


def test_a_restarted_agent_keeps_its_token_and_env(agent):
    if agent["mode"] != "host":
        pytest.skip("restarts the host agent; test_zz_agent_restart.py kills the guest's")
    state_dir = os.path.dirname(agent["state_file"])
    assert stat.S_IMODE(os.stat(agent["state_file"]).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(state_dir).st_mode) == 0o700
    old = agent["proc"].pid
    restart_host_agent(agent)
    assert agent["proc"].pid != old
    assert_fails_closed(agent)
