"""Code-interpreter benchmark (prints figures, asserts nothing about speed): as root, with a
release build and the template built (`ember template build code-interpreter`),

    target/sdk-venv/bin/python tests/serve/bench_interpreter.py

Starts an `ember serve` of its own and measures, with the official `e2b-code-interpreter` SDK:
- create `code-interpreter-v1` -> first `run_code("1+1")` result, p50/p99 over 20, with the
  pool warm (`--interpreter-pool 2`, a pause between rounds to refill it) and without (`0`: each
  create restores the template snapshot on its path);
- `run_code("x += 1")` round trip on a warm context, p50/p99 over 30;
- idle PSS per sandbox (QEMU's, from /proc/PID/smaps_rollup) with 10 code-interpreter
  sandboxes running, each having run one Python and one JavaScript cell, after 20 s of quiet;
- the template snapshot's size on disk (RAM file allocated and apparent, device state, disk).
`BENCH_ROUNDS` changes the 20.
"""

import glob
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from conftest import KEY, Daemon, free_port, pct, qemu_processes  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "20"))
CACHE = os.environ.get("EMBER_CACHE_DIR", "/var/cache/ember")


def start(*extra):
    data_dir = tempfile.mkdtemp(prefix="ember-bench-ci-")
    os.chmod(data_dir, 0o755)
    d = Daemon(data_dir, free_port())
    d.start("--destroy-on-exit", "--pool", "0", "--max-sandboxes", "16", *extra)
    os.environ.update(E2B_API_URL=d.url, E2B_SANDBOX_URL=d.url, E2B_API_KEY=KEY)
    return d


def stop(d):
    d.stop()
    subprocess.run(["rm", "-rf", d.data_dir], check=False)


def wait_template():
    """The first create may wait for the template's snapshot (built by the pool filler)."""
    from e2b_code_interpreter import Sandbox

    deadline = time.time() + 1800
    while True:
        try:
            s = Sandbox.create(request_timeout=600)
            assert s.run_code("1+1", timeout=300).text == "2"
            s.kill()
            return
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(5)


def create_to_first_result(pause):
    from e2b_code_interpreter import Sandbox

    times = []
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        s = Sandbox.create()
        r = s.run_code("1+1")
        times.append((time.perf_counter() - t0) * 1000)
        assert r.text == "2", r
        s.kill()
        time.sleep(pause)
    return times


def report(label, times):
    print(f"{label}: p50 {statistics.median(times):.0f} ms, p99 {pct(times, 99):.0f} ms "
          f"(min {min(times):.0f}, max {max(times):.0f}, n={len(times)})", flush=True)


def pss_kib(pid):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def snapshot_size():
    """The snapshot entry used last: the bench creates only code-interpreter sandboxes."""
    entries = [e for e in glob.glob(f"{CACHE}/snapshots/*") if os.path.isfile(f"{e}/last-used")]
    if not entries:
        return "snapshot: not found"
    entry = max(entries, key=lambda e: os.path.getmtime(f"{e}/last-used"))
    parts = []
    for name in ("ram", "state", "disk.qcow2"):
        st = os.stat(f"{entry}/{name}")
        parts.append(f"{name} {st.st_blocks * 512 / 2**20:.0f} MiB allocated ({st.st_size / 2**20:.0f} MiB apparent)")
    return f"template snapshot {os.path.basename(entry)}: " + ", ".join(parts)


def main():
    from e2b_code_interpreter import Sandbox

    d = start("--interpreter-pool", "2")
    try:
        wait_template()
        time.sleep(10)
        report("create + first run_code, pool warm", create_to_first_result(pause=4))
        s = Sandbox.create()
        s.run_code("x = 0")
        rt = []
        for _ in range(30):
            t0 = time.perf_counter()
            s.run_code("x += 1")
            rt.append((time.perf_counter() - t0) * 1000)
        s.kill()
        report("run_code('x += 1') round trip, warm context", rt)
    finally:
        stop(d)

    d = start("--interpreter-pool", "0")
    try:
        wait_template()
        report("create + first run_code, no pool", create_to_first_result(pause=0.5))
        boxes = [Sandbox.create() for _ in range(10)]
        for b in boxes:
            b.run_code("1+1")
            b.run_code("1+1", language="javascript")
        time.sleep(20)
        pids = [pid for pid, _ in qemu_processes(d.data_dir)]
        pss = [pss_kib(pid) / 1024 for pid in pids]
        print(f"idle PSS with {len(pids)} code-interpreter sandboxes: {statistics.mean(pss):.0f} MiB each "
              f"on average (min {min(pss):.0f}, max {max(pss):.0f}), {sum(pss):.0f} MiB in all", flush=True)
        for b in boxes:
            b.kill()
    finally:
        stop(d)
    print(snapshot_size())


if __name__ == "__main__":
    main()
