"""Metrics and logs as E2B serves them: a time series of metrics sampled every few seconds
while the sandbox runs (`get_metrics`, official SDK `e2b`, pinned, with start/end), the latest
of several sandboxes in one call, and the sandbox's own log (`/v2/sandboxes/{id}/logs`): the
agent's lines with their own timestamps (process starts and exits) and the daemon's lifecycle
events, with cursor, direction, level and search.

Run: target/sdk-venv/bin/python -m pytest tests/serve/test_observe.py -q -p no:cacheprovider
"""

import datetime
import time

import httpx
from e2b import Sandbox

from conftest import KEY

H = {"X-API-Key": KEY}


def test_metrics_are_a_time_series(daemon):
    a = Sandbox.create()
    b = Sandbox.create()
    try:
        deadline = time.time() + 40
        while len(series := a.get_metrics()) < 2 and time.time() < deadline:
            time.sleep(1)
        assert len(series) >= 2, series
        stamps = [m.timestamp for m in series]
        assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
        assert all(m.cpu_count == 1 and m.mem_total > 0 and m.disk_total > 0 for m in series)
        later = a.get_metrics(start=stamps[-1])
        assert later and later[0].timestamp == stamps[-1] and all(m.timestamp >= stamps[-1] for m in later)
        assert a.get_metrics(end=stamps[0] - datetime.timedelta(seconds=1)) == []
        r = httpx.get(
            f"{daemon.url}/sandboxes/metrics",
            params={"sandbox_ids": f"{a.sandbox_id},{b.sandbox_id},nosuchsandbox"},
            headers=H,
        )
        assert r.status_code == 200, r.text
        assert sorted(r.json()["sandboxes"]) == sorted([a.sandbox_id, b.sandbox_id])
        assert r.json()["sandboxes"][a.sandbox_id]["memTotal"] > 0
        many = ",".join(f"x{i}" for i in range(101))
        assert httpx.get(f"{daemon.url}/sandboxes/metrics", params={"sandbox_ids": many}, headers=H).status_code == 400
    finally:
        a.kill()
        b.kill()


def logs(daemon, sbx, **params):
    r = httpx.get(f"{daemon.url}/v2/sandboxes/{sbx.sandbox_id}/logs", params=params, headers=H)
    assert r.status_code == 200, r.text
    return r.json()["logs"]


def test_logs_carry_process_starts_and_exits_and_lifecycle_events(daemon):
    sbx = Sandbox.create()
    try:
        sbx.commands.run("echo one")
        time.sleep(0.5)
        sbx.commands.run("true")
        sbx.pause()
        sbx = Sandbox.connect(sbx.sandbox_id)
        entries = logs(daemon, sbx)
        messages = [e["message"] for e in entries]
        assert any(m.startswith("sandbox created") for m in messages), messages
        assert "sandbox paused (memory and filesystem saved)" in messages and "sandbox resumed" in messages
        started = [e for e in entries if e["message"] == "process started"]
        ended = [e for e in entries if e["message"] == "process ended"]
        assert len(started) >= 2 and len(ended) >= 2, messages
        assert started[0]["fields"]["cmd"] == "/bin/bash" and int(started[0]["fields"]["pid"]) > 1
        assert ended[0]["fields"]["exit_code"] == "0"
        stamps = [e["timestamp"] for e in entries]
        assert stamps == sorted(stamps), "oldest first"
        assert len(set(e["timestamp"] for e in started + ended)) >= 3, "each line has its own time"
        newest_first = logs(daemon, sbx, direction="backward", limit=2)
        assert [e["message"] for e in newest_first] == [e["message"] for e in entries[::-1][:2]]
        assert all(e["message"] == "process ended" for e in logs(daemon, sbx, search="PROCESS ENDED"))
        assert all(e["level"] in ("warn", "error") for e in logs(daemon, sbx, level="warn"))
        # cursor: Unix ms, forward from it.
        cut = started[1]["timestamp"]
        cut_ms = round(datetime.datetime.fromisoformat(cut.replace("Z", "+00:00")[:26] + "+00:00").timestamp() * 1000)
        after = logs(daemon, sbx, cursor=cut_ms)
        assert after and all(e["timestamp"] >= cut[:23] for e in after)
        for bad in ({"direction": "up"}, {"limit": 0}, {"level": "loud"}, {"search": "x" * 300}):
            r = httpx.get(f"{daemon.url}/v2/sandboxes/{sbx.sandbox_id}/logs", params=bad, headers=H)
            assert r.status_code == 400, (bad, r.text)
    finally:
        sbx.kill()
