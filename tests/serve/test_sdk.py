"""The official Python SDK against `ember serve`: lifecycle, commands, PTY, files, listing,
time-outs, auth and teams, many sandboxes at once, and a daemon restart."""

import hashlib
import io
import os
import signal
import subprocess
import threading
import time

import httpx
import pytest
from e2b import AuthenticationException, CommandExitException, NotFoundException, Sandbox, SandboxQuery, SandboxState
from e2b.sandbox.commands.command_handle import PtySize

from conftest import EMBER, KEY, qemu_processes


def test_create_with_metadata_and_env_vars(sbx):
    assert len(sbx.sandbox_id) == 20
    r = sbx.commands.run('echo "$FROM_CREATE"; uname -r; id -un; pwd')
    assert r.stdout.split() == ["yes", r.stdout.split()[1], "user", "/home/user"]
    assert r.stdout.split()[1].startswith("6.1.")
    info = sbx.get_info()
    assert info.metadata == {"suite": "serve"}
    assert info.state == SandboxState.RUNNING
    assert info.cpu_count >= 1 and info.memory_mb >= 128
    assert info.template_id == "base"


def test_commands(sbx):
    r = sbx.commands.run("echo out; echo err >&2")
    assert (r.stdout, r.stderr, r.exit_code) == ("out\n", "err\n", 0)
    with pytest.raises(CommandExitException) as e:
        sbx.commands.run("exit 4")
    assert e.value.exit_code == 4
    assert sbx.commands.run("pwd", cwd="/tmp").stdout == "/tmp\n"
    assert sbx.commands.run("id -u", user="root").stdout == "0\n"
    h = sbx.commands.run("cat", background=True, stdin=True)
    sbx.commands.send_stdin(h.pid, "via stdin\n")
    sbx.commands.close_stdin(h.pid)
    assert h.wait().stdout == "via stdin\n"
    bg = sbx.commands.run("sleep 120", background=True)
    assert bg.pid in [p.pid for p in sbx.commands.list()]
    assert bg.kill() is True
    assert bg.pid not in [p.pid for p in sbx.commands.list()]


def test_pty(sbx):
    out = bytearray()
    h = sbx.pty.create(PtySize(rows=20, cols=60))
    t = threading.Thread(target=lambda: h.wait(on_pty=out.extend))
    t.start()
    sbx.pty.send_stdin(h.pid, b"stty size; echo pty-$((2+3)); exit\n")
    t.join(60)
    assert b"20 60" in out and b"pty-5" in out


def test_files(sbx):
    f = sbx.files
    f.write("/home/user/d/a.txt", "alpha")
    assert f.read("/home/user/d/a.txt") == "alpha"
    assert f.exists("/home/user/d/a.txt") and not f.exists("/home/user/d/zz")
    assert f.make_dir("/home/user/d/sub") is True
    assert sorted(e.name for e in f.list("/home/user/d")) == ["a.txt", "sub"]
    f.rename("/home/user/d/a.txt", "/home/user/d/sub/b.txt")
    assert f.read("/home/user/d/sub/b.txt") == "alpha"
    f.remove("/home/user/d/sub")
    assert not f.exists("/home/user/d/sub")
    with pytest.raises(NotFoundException):
        f.read("/home/user/d/sub/b.txt")


def test_watch(sbx):
    sbx.files.make_dir("/home/user/w")
    w = sbx.files.watch_dir("/home/user/w")
    sbx.files.write("/home/user/w/new.txt", "x")
    deadline, events = time.time() + 20, []
    while time.time() < deadline and not any(e.name == "new.txt" for e in events):
        events += w.get_new_events()
        time.sleep(0.2)
    w.stop()
    assert any(e.name == "new.txt" for e in events)


def test_signed_urls_without_routing_headers(sbx):
    sbx.files.write("/home/user/u.txt", "via url")
    url = sbx.download_url("/home/user/u.txt")
    r = httpx.get(url)
    assert r.status_code == 200 and r.text == "via url"
    r = httpx.post(sbx.upload_url("/home/user/up.txt"), files={"file": ("up.txt", b"uploaded")})
    assert r.status_code == 200, r.text
    assert sbx.files.read("/home/user/up.txt") == "uploaded"
    assert httpx.get(sbx.download_url("/home/user/u.txt", use_signature_expiration=-5)).json() == {
        "code": 401, "message": "signature is already expired"}


def test_large_file(sbx):
    blob = os.urandom(1 << 20) * 100
    sbx.files.write("/home/user/big.bin", io.BytesIO(blob))
    h = hashlib.sha256()
    for chunk in sbx.files.read("/home/user/big.bin", format="stream"):
        h.update(chunk)
    assert h.hexdigest() == hashlib.sha256(blob).hexdigest()


def test_list_filters_and_pages(daemon):
    a = Sandbox.create(metadata={"listing": "yes", "n": "1"})
    b = Sandbox.create(metadata={"listing": "yes", "n": "2"})
    try:
        found = Sandbox.list(query=SandboxQuery(metadata={"listing": "yes"})).next_items()
        assert {s.sandbox_id for s in found} == {a.sandbox_id, b.sandbox_id}
        one = Sandbox.list(query=SandboxQuery(metadata={"listing": "yes", "n": "2"})).next_items()
        assert [s.sandbox_id for s in one] == [b.sandbox_id]
        paused = Sandbox.list(query=SandboxQuery(state=[SandboxState.PAUSED])).next_items()
        assert paused == []
        pages = Sandbox.list(query=SandboxQuery(metadata={"listing": "yes"}), limit=1)
        first = pages.next_items()
        assert len(first) == 1 and pages.has_next
        second = pages.next_items()
        assert {first[0].sandbox_id, second[0].sandbox_id} == {a.sandbox_id, b.sandbox_id}
    finally:
        a.kill()
        b.kill()


def test_set_timeout_ends_the_sandbox(daemon):
    s = Sandbox.create(timeout=300)
    s.set_timeout(3)
    time.sleep(6)
    assert s.is_running() is False
    with pytest.raises(NotFoundException):
        Sandbox.get_info(s.sandbox_id)
    assert Sandbox.kill(s.sandbox_id) is False


def test_kill_and_dead_sandbox_traffic(daemon):
    s = Sandbox.create()
    assert s.kill() is True
    assert Sandbox.kill(s.sandbox_id) is False
    assert s.is_running() is False
    r = httpx.get(f"{daemon.url}/health", headers={"E2b-Sandbox-Id": s.sandbox_id, "E2b-Sandbox-Port": "49983"})
    assert r.status_code == 502 and "was not found" in r.json()["message"]


def test_connect_extends_and_returns_a_working_sandbox(sbx):
    again = Sandbox.connect(sbx.sandbox_id, timeout=600)
    assert again.commands.run("echo connected").stdout == "connected\n"


def test_keys_and_teams(sbx, daemon, other_key):
    with pytest.raises(AuthenticationException):
        Sandbox.list(api_key="e2b_" + "0" * 40).next_items()
    mine = {s.sandbox_id for s in Sandbox.list().next_items()}
    assert sbx.sandbox_id in mine
    theirs = {s.sandbox_id for s in Sandbox.list(api_key=other_key).next_items()}
    assert sbx.sandbox_id not in theirs
    with pytest.raises(NotFoundException):
        Sandbox.get_info(sbx.sandbox_id, api_key=other_key)
    assert Sandbox.kill(sbx.sandbox_id, api_key=other_key) is False
    assert sbx.is_running()
    keys = daemon.ember("apikey", "list").stdout
    assert "team=other" in keys and other_key not in keys


def test_metrics_and_logs(sbx, daemon):
    metrics = sbx.get_metrics()
    assert metrics and metrics[0].mem_total > 0 and metrics[0].cpu_count >= 1
    r = httpx.get(f"{daemon.url}/sandboxes/{sbx.sandbox_id}/logs", headers={"X-API-Key": KEY})
    assert r.status_code == 200
    assert any("ember" in line["line"] for line in r.json()["logs"])


def test_ten_sandboxes_at_once(daemon):
    results, errors = {}, []

    def one(i):
        try:
            s = Sandbox.create(metadata={"batch": "ten"})
            results[i] = s.commands.run(f"echo {i}").stdout.strip()
            s.kill()
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert not errors, errors
    assert results == {i: str(i) for i in range(10)}


def test_bad_input_gets_json_errors_and_disturbs_nothing(sbx, daemon, other_key):
    h = {"X-API-Key": KEY, "Content-Type": "application/json"}
    cases = [
        (b"{not json", 400),
        (b'{"templateID": "no-such-template"}', 400),
        (b'{"templateID": "base", "timeout": 0}', 400),
        (b'{"templateID": "base", "timeout": 999999}', 400),
        (b'{"templateID": "base", "metadata": {"k": "' + b"v" * 9000 + b'"}}', 400),
        (b'{"templateID": "base", "envVars": {"A=B": "x"}}', 400),
        (b'{"templateID": "base", "envVars": ' + b"{" + b",".join(b'"k%d": "v"' % i for i in range(200)) + b"}}", 400),
        (b'{"templateID": "base", "metadata": {"x": "' + b"v" * (2 << 20) + b'"}}', 413),
    ]
    for body, status in cases:
        r = httpx.post(f"{daemon.url}/v2/sandboxes", content=body, headers=h, timeout=30)
        assert r.status_code == status, (body[:60], r.status_code, r.text)
        assert r.json()["code"] == status and r.json()["message"]
    assert httpx.post(f"{daemon.url}/v2/sandboxes", json={"templateID": "base"}).status_code == 401
    r = httpx.post(f"{daemon.url}/sandboxes/{sbx.sandbox_id}/timeout", json={"timeout": -1}, headers=h)
    assert r.status_code == 400
    r = httpx.delete(f"{daemon.url}/sandboxes/{sbx.sandbox_id}", headers={"X-API-Key": other_key})
    assert r.status_code == 404 and r.json()["code"] == 404
    r = httpx.post(f"{daemon.url}/init", headers={"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "49983"}, json={})
    assert r.status_code == 403
    assert sbx.commands.run("echo still fine").stdout == "still fine\n"


def test_daemon_restart_with_sandboxes_running(daemon):
    survivor = Sandbox.create(metadata={"restart": "survivor"})
    doomed = Sandbox.create(metadata={"restart": "doomed"})
    survivor.files.write("/home/user/before.txt", "kept")
    daemon.stop(signal.SIGKILL)
    # While the daemon is down, one sandbox's VM dies too.
    victims = [pid for pid, cmd in qemu_processes(doomed.sandbox_id)]
    assert len(victims) == 1
    os.kill(victims[0], signal.SIGKILL)
    # An `ember run` on the same data directory meanwhile must leave the daemon's sandboxes alone.
    run = subprocess.run([EMBER, "run", "--", "true"], env={**os.environ, "EMBER_DATA_DIR": daemon.data_dir},
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    daemon.start("--destroy-on-exit")
    assert survivor.commands.run("cat /home/user/before.txt").stdout == "kept"
    assert Sandbox.get_info(survivor.sandbox_id).metadata == {"restart": "survivor"}
    with pytest.raises(NotFoundException):
        Sandbox.get_info(doomed.sandbox_id)
    assert doomed.is_running() is False
    assert not os.path.exists(os.path.join(daemon.data_dir, "sandboxes", doomed.sandbox_id))
    survivor.kill()
