"""E2B's lifecycle through the official SDK (`e2b`, pinned): on time-out a sandbox pauses
instead of ending when its lifecycle says so, `Sandbox.connect` resumes it as it was (same boot,
same processes), traffic wakes it with `auto_resume` (two requests at once: one resume, both
answered), `set_timeout(0)` times it out now, and a stream from a sandbox that is killed or
paused ends at once with the SDK's error instead of hanging.

Run: target/sdk-venv/bin/python -m pytest tests/serve/test_lifecycle.py -q -p no:cacheprovider
"""

import datetime
import os
import threading
import time

import httpx
import pytest
from e2b import Sandbox, SandboxState
from e2b.exceptions import SandboxException

from conftest import KEY


def wait_for_state(sandbox_id, state, within=60):
    deadline = time.time() + within
    while time.time() < deadline:
        if Sandbox.get_info(sandbox_id).state == state:
            return
        time.sleep(0.5)
    raise AssertionError(f"{sandbox_id} did not become {state} within {within} s")


def boot_id(sbx):
    return sbx.commands.run("cat /proc/sys/kernel/random/boot_id").stdout.strip()


def test_a_time_out_pauses_and_connect_resumes_the_same_boot(daemon):
    sbx = Sandbox.create(timeout=120, lifecycle={"on_timeout": "pause"})
    try:
        info = sbx.get_info()
        assert info.lifecycle == {"on_timeout": "pause", "auto_resume": False}
        boot = boot_id(sbx)
        sbx.commands.run("nohup sleep 3600 >/dev/null 2>&1 & echo $! > /tmp/sleeper")
        sbx.set_timeout(0)
        wait_for_state(sbx.sandbox_id, SandboxState.PAUSED)
        # Without auto_resume traffic does not wake it.
        with pytest.raises(SandboxException):
            sbx.commands.run("true", request_timeout=10)
        assert Sandbox.get_info(sbx.sandbox_id).state == SandboxState.PAUSED
        resumed = Sandbox.connect(sbx.sandbox_id, timeout=60)
        assert boot_id(resumed) == boot, "a resume continues the same boot"
        assert resumed.commands.run("kill -0 $(cat /tmp/sleeper) && echo alive").stdout == "alive\n"
        assert Sandbox.get_info(sbx.sandbox_id).state == SandboxState.RUNNING
    finally:
        sbx.kill()


def test_auto_resume_wakes_a_paused_sandbox_once_for_two_requests(daemon):
    sbx = Sandbox.create(timeout=120, lifecycle={"on_timeout": "pause", "auto_resume": True})
    try:
        assert sbx.get_info().lifecycle == {"on_timeout": "pause", "auto_resume": True}
        boot = boot_id(sbx)
        sbx.files.write("/home/user/kept.txt", "before the pause")
        sbx.set_timeout(0)
        wait_for_state(sbx.sandbox_id, SandboxState.PAUSED)
        results, errors = [], []

        def call(cmd):
            try:
                results.append(sbx.commands.run(cmd, request_timeout=120).stdout)
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=call, args=(c,)) for c in ("cat /home/user/kept.txt", "echo second")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
        assert not errors, errors
        assert sorted(results) == ["before the pause", "second\n"]
        with open(os.path.join(daemon.data_dir, "daemon.log")) as f:
            log = f.read()
        resumes = [l for l in log.splitlines() if "sandbox resumed" in l and sbx.sandbox_id in l]
        assert len(resumes) == 1, resumes
        # Resumed by traffic, it has its create's time-out again (120 s).
        left = Sandbox.get_info(sbx.sandbox_id).end_at - datetime.datetime.now(datetime.timezone.utc)
        assert left.total_seconds() > 60, left
        assert Sandbox.get_info(sbx.sandbox_id).state == SandboxState.RUNNING
        assert boot_id(sbx) == boot
        # A request without the sandbox's access token does not wake it.
        sbx.pause()
        r = httpx.get(f"{daemon.url}/health", headers={"E2b-Sandbox-Id": sbx.sandbox_id})
        assert r.status_code == 502
        assert Sandbox.get_info(sbx.sandbox_id).state == SandboxState.PAUSED
    finally:
        sbx.kill()


def test_a_request_to_an_exposed_port_wakes_an_auto_resume_sandbox(daemon):
    sbx = Sandbox.create(timeout=120, lifecycle={"on_timeout": "pause", "auto_resume": True})
    try:
        sbx.files.write("/tmp/www/marker.txt", "served")
        sbx.commands.run("python3 -m http.server 8000 --bind 0.0.0.0 --directory /tmp/www", background=True)
        host = sbx.get_host(8000)

        def get():
            return httpx.get(f"{daemon.url}/marker.txt", headers={"Host": host}, timeout=120)

        deadline = time.time() + 60
        while get().status_code != 200 and time.time() < deadline:
            time.sleep(0.5)
        sbx.set_timeout(0)
        wait_for_state(sbx.sandbox_id, SandboxState.PAUSED)
        r = get()
        assert (r.status_code, r.text) == (200, "served"), (r.status_code, r.text)
        assert Sandbox.get_info(sbx.sandbox_id).state == SandboxState.RUNNING
    finally:
        sbx.kill()


def test_set_timeout_zero_times_out_now(daemon):
    sbx = Sandbox.create()
    sbx.set_timeout(0)
    deadline = time.time() + 20
    while time.time() < deadline and sbx.sandbox_id in [s.sandbox_id for s in Sandbox.list().next_items()]:
        time.sleep(0.25)
    assert sbx.sandbox_id not in [s.sandbox_id for s in Sandbox.list().next_items()]
    r = httpx.post(f"{daemon.url}/sandboxes/{sbx.sandbox_id}/timeout", json={"timeout": 0}, headers={"X-API-Key": KEY})
    assert r.status_code == 404


def test_time_out_bounds_and_lifecycle_checks(daemon):
    sbx = Sandbox.create()
    try:
        for bad in (-1, 10**9):
            r = httpx.post(
                f"{daemon.url}/sandboxes/{sbx.sandbox_id}/timeout", json={"timeout": bad}, headers={"X-API-Key": KEY}
            )
            assert r.status_code == 400 and "timeout" in r.json()["message"], r.text
        for body in (
            {"templateID": "base", "autoResume": {"enabled": True}},
            {"templateID": "base", "autoPause": True, "autoPauseMemory": False, "autoResume": {"enabled": True}},
        ):
            r = httpx.post(f"{daemon.url}/v2/sandboxes", json=body, headers={"X-API-Key": KEY})
            assert r.status_code == 400, r.text
        assert sbx.is_running()
    finally:
        sbx.kill()


def pause_mode(daemon, sandbox_id):
    r = httpx.get(f"{daemon.url}/sandboxes/{sandbox_id}", headers={"X-API-Key": KEY})
    assert r.status_code == 200, r.text
    return r.json().get("pauseMode")


def test_a_filesystem_only_pause_keeps_the_disk_and_a_resume_boots_from_it(daemon):
    sbx = Sandbox.create(envs={"KEPT": "yes"})
    try:
        boot = boot_id(sbx)
        sbx.files.write("/home/user/kept.txt", "on disk")
        sbx.commands.run("nohup sleep 3600 >/dev/null 2>&1 &")
        assert pause_mode(daemon, sbx.sandbox_id) is None
        assert sbx.pause(mode="filesystem") is True
        assert pause_mode(daemon, sbx.sandbox_id) == "filesystem"
        resumed = Sandbox.connect(sbx.sandbox_id, timeout=120, request_timeout=300)
        assert resumed.files.read("/home/user/kept.txt") == "on disk"
        assert boot_id(resumed) != boot, "a filesystem-only pause resumes by booting"
        out = resumed.commands.run("pgrep -x sleep || echo none; echo $KEPT $E2B_SANDBOX_ID; id -un; pwd")
        assert out.stdout.split() == ["none", "yes", sbx.sandbox_id, "user", "/home/user"], out.stdout
        # And it pauses and resumes with its memory after that.
        assert resumed.pause() is True
        assert pause_mode(daemon, sbx.sandbox_id) == "full"
        again = Sandbox.connect(sbx.sandbox_id)
        assert again.files.read("/home/user/kept.txt") == "on disk"
    finally:
        sbx.kill()


def test_a_time_out_can_pause_only_the_filesystem(daemon):
    sbx = Sandbox.create(timeout=120, lifecycle={"on_timeout": {"action": "pause", "mode": "filesystem"}})
    try:
        sbx.files.write("/home/user/kept.txt", "on disk")
        sbx.set_timeout(0)
        wait_for_state(sbx.sandbox_id, SandboxState.PAUSED)
        assert pause_mode(daemon, sbx.sandbox_id) == "filesystem"
        resumed = Sandbox.connect(sbx.sandbox_id, timeout=120, request_timeout=300)
        assert resumed.files.read("/home/user/kept.txt") == "on disk"
    finally:
        sbx.kill()


def wait_raises_quickly(handle, within):
    """Waits on a background command: returns (the exception it raised, seconds it took)."""
    out = {}

    def wait():
        t0 = time.time()
        try:
            handle.wait()
            out["result"] = "returned"
        except Exception as e:  # noqa: BLE001 - the test checks it
            out["error"] = e
        out["took"] = time.time() - t0

    t = threading.Thread(target=wait, daemon=True)
    t.start()
    return t, out


def test_a_kill_ends_a_command_stream_at_once(daemon):
    sbx = Sandbox.create()
    handle = sbx.commands.run("sleep 600", background=True, timeout=0)
    t, out = wait_raises_quickly(handle, 30)
    time.sleep(1)
    sbx.kill()
    t.join(30)
    assert not t.is_alive(), "wait() still hangs 30 s after the kill"
    assert "error" in out, out
    assert "killed or reached its end of life" in str(out["error"]) or "not found" in str(out["error"]).lower(), out


def test_a_pause_ends_a_command_stream_and_the_process_lives_on(daemon):
    sbx = Sandbox.create()
    try:
        handle = sbx.commands.run("sleep 600", background=True, timeout=0)
        t, out = wait_raises_quickly(handle, 30)
        time.sleep(1)
        sbx.pause()
        t.join(30)
        assert not t.is_alive(), "wait() still hangs 30 s after the pause"
        assert "error" in out, out
        resumed = Sandbox.connect(sbx.sandbox_id)
        assert handle.pid in [p.pid for p in resumed.commands.list()]
    finally:
        sbx.kill()
