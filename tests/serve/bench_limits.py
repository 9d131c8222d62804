"""Limits benchmark (prints figures, asserts nothing about speed): as root, with a release build,

    target/sdk-venv/bin/python tests/serve/bench_limits.py

Create p50/p99 through the REST API with cgroups on and off (`EMBER_CGROUPS=off`), with a warm
pool of 2 (the cgroup is made when the pool fills, off the create path) and without a pool (the
cgroup is made on the create path, before QEMU starts). Rounds alternate on and off so that the
machine's drift falls on both.
"""

import os
import shutil
import statistics
import sys
import tempfile
import time

import httpx

sys.path.insert(0, os.path.dirname(__file__))
from conftest import KEY, Daemon, free_port, pct  # noqa: E402

CREATES = int(os.environ.get("BENCH_CREATES", "20"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "2"))


def creates(d, n):
    times = []
    for _ in range(n):
        start = time.perf_counter()
        r = httpx.post(f"{d.url}/sandboxes", json={"templateID": "base"}, headers={"X-API-Key": KEY}, timeout=120)
        times.append((time.perf_counter() - start) * 1000)
        assert r.status_code == 201, r.text
        httpx.delete(f"{d.url}/sandboxes/{r.json()['sandboxID']}", headers={"X-API-Key": KEY}, timeout=60)
        time.sleep(0.5)
    return times


def run(cgroups, pool):
    data_dir = tempfile.mkdtemp(prefix="ember-limits-bench-")
    os.chmod(data_dir, 0o755)
    os.environ["EMBER_CGROUPS"] = "on" if cgroups else "off"
    d = Daemon(data_dir, free_port())
    try:
        d.start("--destroy-on-exit", "--pool", str(pool))
        creates(d, 3)  # warm up: template snapshot, pool
        return creates(d, CREATES)
    finally:
        d.stop()
        os.environ.pop("EMBER_CGROUPS", None)
        shutil.rmtree(data_dir, ignore_errors=True)


def main():
    if os.geteuid() != 0:
        sys.exit("bench_limits: run as root")
    results = {}
    for r in range(ROUNDS):
        for pool in (2, 0):
            for cgroups in ((True, False) if r % 2 == 0 else (False, True)):
                results.setdefault((pool, cgroups), []).extend(run(cgroups, pool))
    print(f"limits bench: {CREATES} creates x {ROUNDS} rounds per line, 500 ms apart")
    for (pool, cgroups), times in sorted(results.items(), reverse=True):
        print(f"  pool {pool}, cgroups {'on ' if cgroups else 'off'}: p50 {pct(times, 50):.0f} ms, "
              f"p99 {pct(times, 99):.0f} ms, mean {statistics.mean(times):.0f} ms")


if __name__ == "__main__":
    main()
