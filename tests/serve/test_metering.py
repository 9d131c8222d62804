"""Metering (issue 14, item 4): usage per sandbox survives a daemon `kill -9` (the adopted
sandbox's interval goes on, no gap and no double count) and matches the wall-clock time the test
measures around each call, within a second; pooled sandboxes are not metered; a sandbox that
died while no daemon ran is metered up to its last sign of life, not to the restart."""

import json
import os
import signal
import subprocess
import tempfile
import time

import httpx
import pytest

from conftest import EMBER, KEY, Daemon, end_after_kill, free_port, qemu_processes


@pytest.fixture
def metered():
    data_dir = tempfile.mkdtemp(prefix="ember-meter-test-")
    os.chmod(data_dir, 0o755)
    d = Daemon(data_dir, free_port())
    d.start("--pool", "1")
    yield d
    end_after_kill(d, "--pool", "0")


def api(d, method, path, **kw):
    return httpx.request(method, f"{d.url}{path}", headers={"X-API-Key": KEY}, timeout=180, **kw)


def timed(f):
    before = time.time()
    result = f()
    return before, result, time.time()


def create(d):
    r = api(d, "POST", "/sandboxes", json={"templateID": "base", "timeout": 600})
    assert r.status_code == 201, r.text
    return r.json()["sandboxID"]


def usage(d, *args):
    out = d.ember("usage", "--json", *args).stdout
    teams = {t["team"]: t for t in json.loads(out)["teams"]}
    return teams, {s["sandbox_id"]: s for t in teams.values() for s in t["sandboxes"]}


def within(value, low, high, what):
    """`value` lies between the least and the most the test's clock allows, a second either way."""
    assert low - 1 <= value <= high + 1, f"{what}: {value:.3f} s, wall clock says {low:.3f}-{high:.3f} s"


def test_usage_survives_kill_9_and_matches_wall_clock(metered):
    d = metered
    a0, a, a1 = timed(lambda: create(d))
    b0, b, b1 = timed(lambda: create(d))
    c0, c, c1 = timed(lambda: create(d))
    time.sleep(2)
    d.stop(signal.SIGKILL)
    # While no daemon runs, c's VM dies: it is metered up to its last sign of life at most.
    (c_qemu,) = [pid for pid, _ in qemu_processes(os.path.join(d.data_dir, "sandboxes", c) + "/")]
    c_died = time.time()
    os.kill(c_qemu, signal.SIGKILL)
    time.sleep(3)
    d.start(*d.extra)
    listed = {s["sandboxID"] for s in api(d, "GET", "/sandboxes").json()}
    assert listed == {a, b}, listed
    k0, r, k1 = timed(lambda: api(d, "DELETE", f"/sandboxes/{a}"))
    assert r.status_code == 204
    p0, r, p1 = timed(lambda: api(d, "POST", f"/sandboxes/{b}/pause"))
    assert r.status_code == 204, r.text
    time.sleep(2)
    u0, (teams, sandboxes), u1 = timed(lambda: usage(d))

    assert set(teams) == {"default"}
    assert set(sandboxes) == {a, b, c}, "the pooled sandbox is not metered until a create takes it"
    sa, sb, sc = sandboxes[a], sandboxes[b], sandboxes[c]
    within(sa["running_seconds"], k0 - a1, k1 - a0, "a's running time across the crash")
    assert sa["paused_seconds"] == 0 and sa["ended"] is not None
    within(sb["running_seconds"], p0 - b1, p1 - b0, "b's running time across the crash")
    within(sb["paused_seconds"], u0 - p1, u1 - p0, "b's paused time, up to now")
    assert sb["ended"] is None
    assert sc["running_seconds"] <= c_died - c0 + 1, sc
    # vCPU- and GiB-seconds are of running time (base's 1 vCPU and 256 MiB each).
    for s in (sa, sb):
        assert abs(s["vcpu_seconds"] - 1 * s["running_seconds"]) < 0.01
        assert abs(s["gib_seconds"] - 0.25 * s["running_seconds"]) < 0.01
    total = teams["default"]
    assert abs(total["running_seconds"] - sum(s["running_seconds"] for s in (sa, sb, sc))) < 0.01

    # Filters: another team has nothing; a later --since sees less.
    assert usage(d, "--team", "nobody")[0] == {}
    later = usage(d, "--since", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(p1) + 1)))[1]
    assert set(later) == {b}, "a ended before then"
    assert later[b]["running_seconds"] == 0 and later[b]["paused_seconds"] > 0
    assert subprocess.run([EMBER, "usage", "--since", "yesterday", "--data-dir", d.data_dir],
                          capture_output=True).returncode != 0
    assert "default" in d.ember("usage").stdout

    # The team's metrics: a and b ran together, and c too unless it is metered as dead before b
    # started (its end is the earlier daemon's last heartbeat, up to 5 s before the crash).
    start, end = int(a0) - 1, int(time.time()) + 1
    top = api(d, "GET", f"/teams/default/metrics/max?metric=concurrent_sandboxes&start={start}&end={end}").json()
    assert top["value"] in (2, 3), top
    assert b0 - 1 <= top["timestampUnix"] <= c1 + 1, top
    series = api(d, "GET", f"/teams/default/metrics?start={start}&end={end}").json()
    assert series and all(set(p) == {"timestamp", "timestampUnix", "concurrentSandboxes", "sandboxStartRate"}
                          for p in series)
    assert max(p["concurrentSandboxes"] for p in series) <= 3
    assert sum(p["sandboxStartRate"] for p in series) > 0
    other = api(d, "GET", f"/teams/other/metrics?start={start}&end={end}")
    assert other.status_code == 404 and other.json()["code"] == 404
    bad = api(d, "GET", "/teams/default/metrics/max?metric=nonsense")
    assert bad.status_code == 400 and "metric" in bad.json()["message"]
    assert api(d, "GET", "/teams/default/metrics?start=10&end=5").status_code == 400
