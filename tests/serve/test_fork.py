"""Forks through the official SDK (`e2b`, pinned): `sandbox.fork(count=2)` makes running copies
with the source's memory (a process it runs keeps running in each copy) and disk, each with its
own id and identity, independent of the source and of each other; the source runs on. The
saved state behind the copies outlives the source and goes with the last copy. A deleted
snapshot's files stay while a sandbox made from it lives (it still pauses and resumes).

Run: target/sdk-venv/bin/python -m pytest tests/serve/test_fork.py -q -p no:cacheprovider
"""

import os
import time

import httpx
from e2b import Sandbox

from conftest import KEY


def counter(sbx):
    return int(sbx.commands.run("tail -n1 /home/user/counter").stdout.strip() or -1)


def counts_on(sbx, within=20):
    """Whether the counter moves within `within` seconds (guests are slow under a loaded TCG)."""
    first = counter(sbx)
    deadline = time.time() + within
    while time.time() < deadline:
        time.sleep(0.5)
        if counter(sbx) > first:
            return True
    return False


def saved_states(daemon):
    root = os.path.join(daemon.data_dir, "snapshots")
    return sorted(os.listdir(root)) if os.path.isdir(root) else []


def test_fork_copies_memory_and_disk_and_the_source_runs_on(daemon):
    src = Sandbox.create(metadata={"role": "source"}, envs={"FROM_SOURCE": "yes"})
    forks = []
    try:
        src.files.write("/home/user/before.txt", "written before the fork")
        src.commands.run(
            "nohup bash -c 'i=0; while true; do echo $i >> /home/user/counter; i=$((i+1)); sleep 0.2; done' "
            ">/dev/null 2>&1 &"
        )
        time.sleep(1)
        forks = src.fork(count=2, timeout=120)
        assert len(forks) == 2 and all(isinstance(f, Sandbox) for f in forks), forks
        ids = {src.sandbox_id, *(f.sandbox_id for f in forks)}
        assert len(ids) == 3, "each copy has its own id"
        for f in forks:
            assert f.files.read("/home/user/before.txt") == "written before the fork"
            assert counts_on(f), "the source's running process runs on in the copy"
            out = f.commands.run("echo $FROM_SOURCE $E2B_SANDBOX_ID; hostname").stdout.split()
            assert out == ["yes", f.sandbox_id, f.sandbox_id]
            assert f.get_info().metadata == {"role": "source"}
        forks[0].files.write("/home/user/only-in-fork.txt", "x")
        assert not src.files.exists("/home/user/only-in-fork.txt")
        assert not forks[1].files.exists("/home/user/only-in-fork.txt")
        assert counts_on(src), "the source runs on"
        # The source goes; the copies live on, and can pause and resume.
        src.kill()
        assert forks[0].pause()
        resumed = Sandbox.connect(forks[0].sandbox_id)
        assert resumed.files.read("/home/user/only-in-fork.txt") == "x"
        assert [s for s in saved_states(daemon) if s.startswith("fork-")], "the copies' saved state is kept"
    finally:
        for s in [src, *forks]:
            s.kill()
    assert not [s for s in saved_states(daemon) if s.startswith("fork-")], "the last copy took the saved state"


def test_fork_checks_its_input(daemon):
    sbx = Sandbox.create()
    try:
        for body in ({"count": 0}, {"count": 21}, {"timeout": -1}, {"count": "two"}):
            r = httpx.post(f"{daemon.url}/sandboxes/{sbx.sandbox_id}/fork", json=body, headers={"X-API-Key": KEY})
            assert r.status_code == 400, (body, r.text)
        r = httpx.post(f"{daemon.url}/sandboxes/nosuchsandbox/fork", json={}, headers={"X-API-Key": KEY})
        assert r.status_code == 404
        sbx.pause()
        r = httpx.post(f"{daemon.url}/sandboxes/{sbx.sandbox_id}/fork", json={}, headers={"X-API-Key": KEY})
        assert r.status_code == 409, r.text
    finally:
        sbx.kill()


def test_a_deleted_snapshot_stays_while_a_sandbox_made_from_it_lives(daemon):
    src = Sandbox.create()
    try:
        src.files.write("/home/user/snap.txt", "in the snapshot")
        snap = src.create_snapshot()
        child = Sandbox.create(snap.snapshot_id)
    finally:
        src.kill()
    try:
        assert Sandbox.delete_snapshot(snap.snapshot_id)
        assert snap.snapshot_id in saved_states(daemon)
        assert child.pause()
        resumed = Sandbox.connect(child.sandbox_id)
        assert resumed.files.read("/home/user/snap.txt") == "in the snapshot"
    finally:
        child.kill()
    assert snap.snapshot_id not in saved_states(daemon)
