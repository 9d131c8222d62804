"""Hostile guests and crashes against a real `ember serve` (the security issue's tests).

Each test plays the attacker it names: a guest root process that restarts the agent's server,
removes its state or floods the console; a guest whose agent answers /health but stalls every
other call; a team that piles up snapshots; a daemon killed -9 in the middle of a create or a
pause. After each, the database (what the API lists) and the host (QEMU processes, sandbox
directories, namespaces) must agree, and nothing of the host may be readable by other users.
"""

import os
import signal
import subprocess
import tempfile
import threading
import time

import httpx
import pytest
from e2b import Sandbox

from conftest import KEY, Daemon, end_after_kill, free_port, qemu_processes

ENVD = "49983"

# A fake envd for a hostile guest: answers /health like the agent, stalls every other call.
STALLER = r"""
import http.server, os, signal, socketserver, subprocess, time
for pid in subprocess.run(["pgrep", "-f", "ember-agent serve"], capture_output=True, text=True).stdout.split():
    if int(pid) != os.getpid():
        os.kill(int(pid), signal.SIGKILL)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            self.send_response(204); self.end_headers(); return
        time.sleep(3600)
    def do_POST(self):
        time.sleep(3600)
    def log_message(self, *a): pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    allow_reuse_address = True
    daemon_threads = True
for _ in range(200):
    try:
        srv = S(("0.0.0.0", 49983), H); break
    except OSError:
        time.sleep(0.05)
srv.serve_forever()
"""


def envd(daemon, sbx_id, path, token=None, method="GET", timeout_override=30, **kw):
    headers = {"E2b-Sandbox-Id": sbx_id, "E2b-Sandbox-Port": ENVD}
    if token:
        headers["X-Access-Token"] = token
    return httpx.request(method, f"{daemon.url}{path}", headers=headers, timeout=timeout_override, **kw)


def api(daemon, method, path, **kw):
    return httpx.request(method, f"{daemon.url}{path}", headers={"X-API-Key": KEY}, timeout=120, **kw)


def wait_for(cond, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def agent_pid(sbx):
    """The pid of the agent's server in the guest (never the shell that asks)."""
    out = sbx.commands.run("pgrep -f '^/usr/local/bin/ember-agent serve'", user="root").stdout.split()
    assert len(out) == 1, out
    return int(out[0])


def wait_for_new_agent(sbx, before_pid, timeout=30):
    """Waits until another agent server than `before_pid` answers the sandbox's calls."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if agent_pid(sbx) != before_pid:
                return
        except Exception:
            pass
        time.sleep(0.3)
    raise AssertionError("the agent server did not come back")


def assert_gone(daemon, sbx_id):
    """The API, the QEMU processes and the sandbox directory agree that the sandbox is gone."""
    assert api(daemon, "GET", f"/sandboxes/{sbx_id}").status_code == 404
    wait_for(lambda: not qemu_processes(os.path.join(daemon.data_dir, "sandboxes", sbx_id)), 15, "QEMU to go")
    wait_for(lambda: not os.path.exists(os.path.join(daemon.data_dir, "sandboxes", sbx_id)), 15, "dir to go")
    assert not os.path.exists(f"/run/netns/ember-{sbx_id}")


def start_staller(daemon, sbx):
    """Replaces the guest's agent server with the staller and waits until it answers /health
    (without the real agent's `x-ember-initialised` header)."""
    sbx.files.write("/tmp/staller.py", STALLER)
    try:
        sbx.commands.run("nohup python3 /tmp/staller.py >/dev/null 2>&1 &", user="root", timeout=30)
    except Exception:
        pass  # the staller may kill the server before this call's answer arrives

    def stalling():
        try:
            r = envd(daemon, sbx.sandbox_id, "/health", timeout_override=3)
        except httpx.HTTPError:
            return False
        return r.status_code == 204 and "x-ember-initialised" not in r.headers

    wait_for(stalling, 60, "the staller to take over")


def test_agent_restarted_from_inside_keeps_its_token(daemon, sbx):
    token = sbx._envd_access_token
    before = agent_pid(sbx)
    sbx.commands.run(f"kill -9 {before}", user="root", background=True)
    # PID 1 restarts the server; it reloads the token and env vars from its root-only state.
    wait_for_new_agent(sbx, before)
    assert envd(daemon, sbx.sandbox_id, "/envs").status_code == 401
    r = envd(daemon, sbx.sandbox_id, "/init", method="POST", json={"accessToken": "mine"})
    assert r.status_code == 403, "init is never reachable from outside"
    assert envd(daemon, sbx.sandbox_id, "/envs", token).json().get("FROM_CREATE") == "yes"
    assert sbx.commands.run("echo $FROM_CREATE").stdout == "yes\n"


def test_agent_that_lost_its_state_is_locked_then_reinitialised(daemon, sbx):
    token = sbx._envd_access_token
    before = agent_pid(sbx)
    sbx.commands.run("rm -rf /run/ember; kill -9 $(pgrep -f 'ember-agent serve')", user="root", background=True)
    # The restarted server has no token: it refuses (fails closed), and says so on /health,
    # until the daemon notices and initialises it again (its reaper asks every agent every 5 s).
    locked = []

    def restarted_locked():
        r = envd(daemon, sbx.sandbox_id, "/health")
        if r.status_code == 204 and r.headers.get("x-ember-initialised") == "false":
            locked.append(envd(daemon, sbx.sandbox_id, "/envs", token).status_code)
        return bool(locked) or envd(daemon, sbx.sandbox_id, "/envs", token).status_code == 200

    wait_for(restarted_locked, 30, "the agent to restart")
    assert not locked or locked[0] == 401, "an agent without its state must refuse even the old token"
    wait_for_new_agent(sbx, before)
    assert envd(daemon, sbx.sandbox_id, "/envs", token).json().get("FROM_CREATE") == "yes"
    assert envd(daemon, sbx.sandbox_id, "/envs").status_code == 401
    assert sbx.commands.run("echo $FROM_CREATE").stdout == "yes\n"


def test_console_flood_stops_at_the_cap(daemon, sbx):
    sbx.commands.run("head -c 3000000 /dev/zero | tr '\\0' A > /dev/ttyS0", user="root", timeout=120)
    logs = os.path.join(daemon.data_dir, "sandboxes", sbx.sandbox_id)
    size = lambda n: os.path.getsize(os.path.join(logs, n)) if os.path.exists(os.path.join(logs, n)) else 0
    assert size("serial.log.1") > 0, "the log rotated"
    assert size("serial.log") <= 1 << 20 and size("serial.log.1") <= 1 << 20
    r = api(daemon, "GET", f"/sandboxes/{sbx.sandbox_id}/logs")
    assert r.status_code == 200 and "AAAA" in r.text
    assert sbx.commands.run("echo alive").stdout == "alive\n"


def test_a_stalled_guest_cannot_keep_its_vm_past_a_kill(daemon, sbx):
    sid = sbx.sandbox_id
    start_staller(daemon, sbx)
    # The API does not hang on the stalled guest: metrics answer from the samples taken every
    # 5 s (each with a deadline), or, with none yet, fail at the sampling deadline.
    started = time.time()
    assert api(daemon, "GET", f"/sandboxes/{sid}/metrics").status_code in (200, 500)
    assert time.time() - started < 20
    assert api(daemon, "POST", f"/sandboxes/{sid}/pause").status_code == 204
    # Resume: the guest answers /health but stalls /init; kill it meanwhile.
    result = {}
    t = threading.Thread(target=lambda: result.update(r=api(daemon, "POST", f"/sandboxes/{sid}/connect", json={})))
    t.start()
    time.sleep(2)
    started = time.time()
    assert api(daemon, "DELETE", f"/sandboxes/{sid}").status_code == 204
    assert time.time() - started < 10, "kill waited behind the stalled guest"
    t.join(60)
    assert not t.is_alive() and result["r"].status_code >= 400
    assert_gone(daemon, sid)


def test_a_resume_that_stalls_ends_the_sandbox_and_the_database_agrees(daemon, sbx):
    sid = sbx.sandbox_id
    start_staller(daemon, sbx)
    assert api(daemon, "POST", f"/sandboxes/{sid}/pause").status_code == 204
    started = time.time()
    r = api(daemon, "POST", f"/sandboxes/{sid}/connect", json={})
    assert r.status_code == 500 and "daemon's log" in r.json()["message"], r.text
    assert time.time() - started < 90
    assert_gone(daemon, sid)


def test_a_stalled_guest_still_times_out(daemon, sbx):
    sid = sbx.sandbox_id
    start_staller(daemon, sbx)
    assert api(daemon, "POST", f"/sandboxes/{sid}/timeout", json={"timeout": 2}).status_code == 204
    wait_for(lambda: api(daemon, "GET", f"/sandboxes/{sid}").status_code == 404, 30, "the time-out")
    assert_gone(daemon, sid)


def test_the_proxy_strips_credentials_before_the_guest(daemon, sbx):
    # What the guest receives: a server in the sandbox echoes the request headers.
    server = (
        "import http.server\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        body = str(dict(self.headers)).encode()\n"
        "        self.send_response(200); self.send_header('Content-Length', str(len(body))); self.end_headers()\n"
        "        self.wfile.write(body)\n"
        "http.server.HTTPServer(('0.0.0.0', 8080), H).serve_forever()\n"
    )
    sbx.files.write("/tmp/echo.py", server)
    sbx.commands.run("python3 /tmp/echo.py", background=True)
    headers = {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "8080", "X-API-Key": KEY, "Cookie": "c=1"}
    deadline = time.time() + 30
    while True:
        r = httpx.get(f"{daemon.url}/", headers=headers, timeout=10)
        if r.status_code == 200 or time.time() > deadline:
            break
        time.sleep(0.3)
    assert r.status_code == 200, r.text
    seen = r.text.lower()
    assert KEY.lower() not in seen and "x-api-key" not in seen and "cookie" not in seen
    assert "e2b-sandbox-id" not in seen


def test_nothing_of_the_host_is_readable_by_other_users(daemon, sbx):
    sbx.files.write("/home/user/secret.txt", "secret")
    snap = sbx.create_snapshot()
    assert api(daemon, "POST", f"/sandboxes/{sbx.sandbox_id}/pause").status_code == 204
    try:
        for root in (daemon.data_dir, os.environ.get("EMBER_CACHE_DIR", "/var/cache/ember")):
            out = subprocess.run(
                ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "find", root, "-readable",
                 "-type", "f"],
                capture_output=True, text=True,
            )
            assert out.stdout.strip() == "", f"readable by nobody under {root}:\n{out.stdout[:2000]}"
        db = os.path.join(daemon.data_dir, "ember.db")
        assert os.stat(db).st_mode & 0o077 == 0, oct(os.stat(db).st_mode)
    finally:
        Sandbox.delete_snapshot(snap.snapshot_id)


@pytest.fixture
def crashy():
    """A second daemon of its own (no pool, small quotas) that the tests kill -9."""
    data_dir = tempfile.mkdtemp(prefix="ember-crash-test-")
    d = Daemon(data_dir, free_port())
    args = ("--pool", "0", "--max-snapshots-per-team", "1", "--max-paused-per-team", "1")
    d.start(*args)
    d.args = args
    yield d
    end_after_kill(d, *args)


def assert_consistent(d):
    """What the API lists, the QEMUs running, the sandbox directories and the namespaces agree."""
    listed = {s["sandboxID"]: s["state"] for s in api(d, "GET", "/sandboxes").json()}
    sandboxes = os.path.join(d.data_dir, "sandboxes")
    dirs = set(os.listdir(sandboxes)) if os.path.isdir(sandboxes) else set()
    assert dirs == set(listed), f"directories {dirs} but listed {listed}"
    running = {sid for sid, state in listed.items() if state == "running"}
    for sid in listed:
        vms = qemu_processes(os.path.join(sandboxes, sid) + "/")
        assert (len(vms) == 1) == (sid in running), f"{sid}: {listed[sid]} with {len(vms)} QEMUs"
        assert os.path.exists(f"/run/netns/ember-{sid}") == (sid in running)
    stray = [p for p, cmd in qemu_processes(d.data_dir) if not any(sid in cmd for sid in listed)]
    assert not stray, f"QEMUs without a record: {stray}"
    return listed


def crash_during(d, request, delay):
    def quietly():
        try:
            request()
        except httpx.HTTPError:
            pass  # the daemon was killed under it

    t = threading.Thread(target=quietly, daemon=True)
    t.start()
    time.sleep(delay)
    d.stop(signal.SIGKILL)
    t.join(30)
    d.start(*d.args)


def test_kill_9_during_create_and_pause_leaks_nothing(crashy):
    d = crashy
    create = lambda: api(d, "POST", "/sandboxes", json={"templateID": "base"})
    for delay in (0.05, 0.15, 0.3, 0.6):
        crash_during(d, lambda: create(), delay)
        assert_consistent(d)
    sid = create().json()["sandboxID"]
    for delay in (0.05, 0.2, 0.5):
        listed = assert_consistent(d)
        if listed.get(sid) != "running":
            break
        crash_during(d, lambda: api(d, "POST", f"/sandboxes/{sid}/pause"), delay)
    listed = assert_consistent(d)
    if sid in listed and listed[sid] == "paused":
        r = api(d, "POST", f"/sandboxes/{sid}/connect", json={})
        assert r.status_code == 201, r.text
    assert_consistent(d)


def test_quotas_answer_4xx(crashy):
    d = crashy
    a = api(d, "POST", "/sandboxes", json={"templateID": "base"}).json()["sandboxID"]
    b = api(d, "POST", "/sandboxes", json={"templateID": "base"}).json()["sandboxID"]
    assert api(d, "POST", f"/sandboxes/{a}/snapshots", json={}).status_code == 201
    r = api(d, "POST", f"/sandboxes/{a}/snapshots", json={})
    assert r.status_code == 429 and "snapshots" in r.json()["message"], r.text
    assert api(d, "POST", f"/sandboxes/{a}/pause").status_code == 204
    r = api(d, "POST", f"/sandboxes/{b}/pause")
    assert r.status_code == 429 and "paused" in r.json()["message"], r.text
    assert api(d, "GET", f"/sandboxes/{b}").json()["state"] == "running"
    assert_consistent(d)


def test_a_clean_stop_leaves_no_network_slots():
    data_dir = tempfile.mkdtemp(prefix="ember-slots-test-")
    d = Daemon(data_dir, free_port())
    d.start("--pool", "0")
    slots = os.path.join(data_dir, "slots")
    wait_for(lambda: len(os.listdir(slots)) >= 4, 30, "the network slots to be made")
    made = os.listdir(slots)
    assert all(os.path.exists(f"/run/netns/ember-{sid}") for sid in made)
    d.stop()
    try:
        assert d.proc.returncode == 0, d.log()
        assert os.listdir(slots) == [], "slot markers left"
        left = [sid for sid in made if os.path.exists(f"/run/netns/ember-{sid}")]
        assert not left, f"namespaces of pre-made slots left after a clean stop: {left}"
    finally:
        subprocess.run(["rm", "-rf", data_dir])
