"""Creates restore the template snapshot; pause and resume lose nothing (files, running
processes), five cycles in a row, and a paused sandbox survives a daemon restart."""

import os
import signal
import time

import httpx
from e2b import Sandbox, SandboxQuery, SandboxState

from conftest import KEY


def counter_value(sbx):
    return int(sbx.commands.run("tail -n1 /home/user/counter").stdout.strip() or -1)


def start_counter(sbx):
    sbx.commands.run(
        "nohup bash -c 'i=0; while true; do echo $i >> /home/user/counter; i=$((i+1)); sleep 0.2; done' "
        ">/dev/null 2>&1 &"
    )
    time.sleep(1)


def test_restored_sandboxes_get_their_own_clock_randomness_and_identity(daemon):
    a = Sandbox.create(envs={"WHO": "a"})
    b = Sandbox.create(envs={"WHO": "b"})
    try:
        ra = a.commands.run("echo $WHO; cat /proc/sys/kernel/random/uuid; date +%s; hostname").stdout.split()
        rb = b.commands.run("echo $WHO; cat /proc/sys/kernel/random/uuid; date +%s; hostname").stdout.split()
        assert (ra[0], rb[0]) == ("a", "b")
        assert (ra[3], rb[3]) == (a.sandbox_id, b.sandbox_id), "each sandbox has its own hostname"
        assert a.commands.run("sudo -n true && echo sudo-ok").stdout == "sudo-ok\n"
        assert ra[1] != rb[1], "each restored guest has its own randomness"
        assert abs(int(ra[2]) - time.time()) < 10 and abs(int(rb[2]) - time.time()) < 10, "guest clocks are right"
        assert a.get_info().envd_version == "0.6.13"
        # One sandbox's token does not open another's agent.
        r = httpx.get(f"{daemon.url}/envs", headers={"E2b-Sandbox-Id": a.sandbox_id, "X-Access-Token": b._envd_access_token})
        assert r.status_code == 401
    finally:
        a.kill()
        b.kill()


def test_pause_and_resume_keep_files_and_processes(daemon):
    sbx = Sandbox.create()
    try:
        sbx.files.write("/home/user/before.txt", "written before the pause")
        start_counter(sbx)
        assert sbx.pause() is True
        assert sbx.pause() is False, "409: already paused"
        assert Sandbox.get_info(sbx.sandbox_id).state == SandboxState.PAUSED
        listed = Sandbox.list(query=SandboxQuery(state=[SandboxState.PAUSED])).next_items()
        assert sbx.sandbox_id in [s.sandbox_id for s in listed]
        assert sbx.is_running() is False
        resumed = Sandbox.connect(sbx.sandbox_id)
        assert resumed.files.read("/home/user/before.txt") == "written before the pause"
        first = counter_value(resumed)
        time.sleep(1.5)
        assert counter_value(resumed) > first, "the background process kept running after resume"
        assert Sandbox.get_info(sbx.sandbox_id).state == SandboxState.RUNNING
        r = httpx.post(f"{daemon.url}/sandboxes/{sbx.sandbox_id}/resume", json={}, headers={"X-API-Key": KEY})
        assert r.status_code == 409
    finally:
        Sandbox.kill(sbx.sandbox_id)


def test_five_pause_resume_cycles_lose_nothing(daemon):
    sbx = Sandbox.create()
    try:
        start_counter(sbx)
        last = -1
        for cycle in range(5):
            sbx.files.write(f"/home/user/cycle-{cycle}.txt", str(cycle))
            assert Sandbox.pause(sbx.sandbox_id) is True
            sbx = Sandbox.connect(sbx.sandbox_id)
            files = sorted(e.name for e in sbx.files.list("/home/user") if e.name.startswith("cycle-"))
            assert files == [f"cycle-{i}.txt" for i in range(cycle + 1)]
            now = counter_value(sbx)
            assert now >= last, f"cycle {cycle}: counter went back from {last} to {now}"
            last = now
        time.sleep(1)
        assert counter_value(sbx) > last
    finally:
        Sandbox.kill(sbx.sandbox_id)


def test_paused_sandbox_survives_a_daemon_restart(daemon):
    sbx = Sandbox.create(metadata={"restart": "paused"})
    sbx.files.write("/home/user/kept.txt", "kept across the restart")
    assert sbx.pause() is True
    daemon.restart(signal.SIGKILL)
    assert Sandbox.get_info(sbx.sandbox_id).state == SandboxState.PAUSED
    resumed = Sandbox.connect(sbx.sandbox_id)
    assert resumed.files.read("/home/user/kept.txt") == "kept across the restart"
    assert Sandbox.kill(sbx.sandbox_id) is True
    assert not os.path.exists(os.path.join(daemon.data_dir, "sandboxes", sbx.sandbox_id))


def test_killing_a_paused_sandbox_removes_it(daemon):
    sbx = Sandbox.create()
    assert sbx.pause() is True
    assert Sandbox.kill(sbx.sandbox_id) is True
    assert not os.path.exists(os.path.join(daemon.data_dir, "sandboxes", sbx.sandbox_id))
    assert Sandbox.kill(sbx.sandbox_id) is False


def test_snapshot_of_a_running_sandbox_is_a_template(daemon):
    src = Sandbox.create()
    try:
        src.files.write("/home/user/from-snapshot.txt", "snapshot content")
        start_counter(src)
        snap = src.create_snapshot(name="with-file")
        # E2B's names: `name:tag` (tag `latest` by default), and the full name with the team.
        assert snap.snapshot_id == "with-file:latest" and snap.names == ["default/with-file:latest"]
        assert src.commands.run("echo still running").stdout == "still running\n"
        child = Sandbox.create(snap.snapshot_id)
        by_name = Sandbox.create("with-file")
        assert Sandbox.get_info(by_name.sandbox_id).template_id == "with-file"
        for bad in ("someone-else/with-file", "with file", "with-file:"):
            r = httpx.post(f"{daemon.url}/sandboxes/{src.sandbox_id}/snapshots", json={"name": bad}, headers={"X-API-Key": KEY})
            assert r.status_code == 400, (bad, r.text)
        try:
            assert child.sandbox_id not in (src.sandbox_id, by_name.sandbox_id)
            assert child.files.read("/home/user/from-snapshot.txt") == "snapshot content"
            assert by_name.files.read("/home/user/from-snapshot.txt") == "snapshot content"
            before = counter_value(child)
            time.sleep(1)
            assert counter_value(child) > before, "the snapshot's running process runs on in the child"
            child.files.write("/home/user/child-only.txt", "c")
            assert not src.files.exists("/home/user/child-only.txt")
            assert child.commands.run("hostname").stdout.strip() == child.sandbox_id
        finally:
            child.kill()
            by_name.kill()
        listed = Sandbox.list_snapshots(sandbox_id=src.sandbox_id).next_items()
        assert [s.snapshot_id for s in listed] == [snap.snapshot_id]
        # The same name again: creates by that name get the newest, and the full name works.
        src.files.write("/home/user/from-snapshot.txt", "newer content")
        again = src.create_snapshot(name="default/with-file")
        assert again.snapshot_id == snap.snapshot_id
        newest = Sandbox.create("default/with-file:latest")
        try:
            assert newest.files.read("/home/user/from-snapshot.txt") == "newer content"
        finally:
            newest.kill()
        assert Sandbox.delete_snapshot(again.snapshot_id) is True
        assert Sandbox.delete_snapshot(snap.snapshot_id) is True
        assert Sandbox.delete_snapshot(snap.snapshot_id) is False
        r = httpx.post(f"{daemon.url}/v2/sandboxes", json={"templateID": snap.snapshot_id}, headers={"X-API-Key": KEY})
        assert r.status_code == 400
    finally:
        src.kill()
