"""Performance benchmark of issue 15 (prints figures and their ratio to the issue's "today",
asserts nothing about speed): as root, with a release build, the machine otherwise idle,

    target/sdk-venv/bin/python tests/serve/bench_perf.py

Everything through the official Python SDK (`e2b`, pinned) against an `ember serve` of its own:
with `--pool 0`, a create one at a time, a burst of 8 at once, `commands.run("true")`, a pause of
a sandbox that wrote 50 MiB since its create and the resume after it (connect, then the first
command answered), then 20 idle sandboxes (QEMU's PSS each, and host CPU per sandbox over 20 s:
the QEMUs and the daemon); with the default pool of 2, a create while the pool is warm.
`BENCH_IDLE` sets how many idle sandboxes (20).
"""

import os
import re
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
from conftest import Daemon, free_port, pct, qemu_processes  # noqa: E402
from test_network import finish_daemon, new_data_dir, sdk_env  # noqa: E402

from e2b import Sandbox  # noqa: E402

IDLE = int(os.environ.get("BENCH_IDLE", "20"))
TICKS = os.sysconf("SC_CLK_TCK")

# The "today" (2 vCPUs and 512 MiB per sandbox then, TCG, this machine).
TODAY = {
    "create p50, pool off": 216,
    "create p50, burst of 8, pool off": 2011,
    "create p50, pool warm": 89,
    'commands.run("true") p50': 168,
    "pause, 50 MiB written": 2208,
    "resume (connect, first command)": 848,
    "PSS per idle sandbox": 38.7,
    "host CPU per idle sandbox": 9.3,
}
UNITS = {"PSS per idle sandbox": "MB", "host CPU per idle sandbox": "% of a core"}
results = {}


def ms(t0):
    return (time.perf_counter() - t0) * 1000


def record(what, value):
    results[what] = value
    unit = UNITS.get(what, "ms")
    print(f"{what:<36} {value:9.1f} {unit:<12} today {TODAY[what]:8.1f}   ratio {value / TODAY[what]:5.2f}", flush=True)


def timed_create():
    t0 = time.perf_counter()
    s = Sandbox.create(timeout=300)
    return s, ms(t0)


def log_size(d):
    return os.path.getsize(os.path.join(d.data_dir, "daemon.log"))


def breakdown(d, offset):
    """p50 of the timings the daemon logged since `offset` for each create ("sandbox created":
    the whole, the VM, `/init`) and each VM start ("sandbox ready": QMP up, state loaded, agent
    answering)."""
    with open(os.path.join(d.data_dir, "daemon.log")) as f:
        f.seek(offset)
        lines = f.read().splitlines()
    fields = {}
    for line in lines:
        line = re.sub(r"\x1b\[[0-9;]*m", "", line)  # the log's colours
        for event, names in (("sandbox created", ("ms", "vm_ms", "init_ms")),
                             ("sandbox ready", ("qmp_ms", "load_ms", "agent_ms"))):
            if event in line:
                found = dict(re.findall(r"(\w+)=(\d+)", line))
                for name in names:
                    if name in found:
                        key = "create" if (event, name) == ("sandbox created", "ms") else name
                        fields.setdefault(key, []).append(int(found[name]))
    parts = [f"{k} {statistics.median(v):.0f}" for k, v in fields.items()]
    print(f"  in the daemon (p50 ms): {', '.join(parts)}", flush=True)


def one_at_a_time(n=10):
    times = []
    for _ in range(n):
        s, t = timed_create()
        times.append(t)
        s.kill()
    return times


def burst(n=8):
    times, made, lock = [], [], threading.Lock()

    def one():
        s, t = timed_create()
        with lock:
            times.append(t)
            made.append(s)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in made:
        s.kill()
    return times


def round_trips(n=30):
    s, _ = timed_create()
    try:
        s.commands.run("true")
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            s.commands.run("true")
            times.append(ms(t0))
        return times
    finally:
        s.kill()


def pause_resume(rounds=3):
    pauses, resumes = [], []
    for _ in range(rounds):
        s, _ = timed_create()
        try:
            s.commands.run("head -c 50M /dev/urandom > /home/user/written")
            t0 = time.perf_counter()
            s.pause()
            pauses.append(ms(t0))
            t0 = time.perf_counter()
            again = Sandbox.connect(s.sandbox_id, timeout=300)
            again.commands.run("true")
            resumes.append(ms(t0))
        finally:
            s.kill()
    return pauses, resumes


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def pss_kib(pid):
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Pss:"))


def idle(d, n):
    made = []
    try:
        for _ in range(n):
            made.append(timed_create()[0])
        time.sleep(20)
        qemus = [pid for pid, _ in qemu_processes(d.data_dir)]
        pids = qemus + [d.proc.pid]
        before = {p: cpu_ticks(p) for p in pids}
        t0 = time.perf_counter()
        time.sleep(20)
        used = sum(cpu_ticks(p) - before[p] for p in pids) / TICKS
        elapsed = time.perf_counter() - t0
        pss = [pss_kib(p) for p in qemus]
        # Each still answers.
        for s in made:
            s.commands.run("echo ok", timeout=10)
        return statistics.mean(pss) / 1000 * 1.024, used / elapsed / n * 100, len(qemus)
    finally:
        for s in made:
            s.kill()


def main():
    if os.geteuid() != 0:
        sys.exit("bench_perf: run as root")
    d = Daemon(new_data_dir("ember-bench-perf-"), free_port())
    d.start("--destroy-on-exit", "--pool", "0", "--interpreter-pool", "0", "--max-sandboxes", str(IDLE + 4))
    try:
        with sdk_env(d):
            timed_create()[0].kill()  # the template snapshot
            offset = log_size(d)
            record("create p50, pool off", pct(one_at_a_time(), 50))
            breakdown(d, offset)
            record("create p50, burst of 8, pool off", pct(burst(), 50))
            record('commands.run("true") p50', pct(round_trips(), 50))
            pauses, resumes = pause_resume()
            record("pause, 50 MiB written", pct(pauses, 50))
            record("resume (connect, first command)", pct(resumes, 50))
            pss, cpu, seen = idle(d, IDLE)
            print(f"  ({IDLE} idle sandboxes, {seen} QEMUs found)")
            record("PSS per idle sandbox", pss)
            record("host CPU per idle sandbox", cpu)
    finally:
        finish_daemon(d)
    d = Daemon(new_data_dir("ember-bench-perf-"), free_port())
    d.start("--destroy-on-exit", "--interpreter-pool", "0")
    try:
        with sdk_env(d):
            times = []
            for _ in range(10):
                time.sleep(3)  # the pool refills
                s, t = timed_create()
                times.append(t)
                s.kill()
            record("create p50, pool warm", pct(times, 50))
    finally:
        finish_daemon(d)


if __name__ == "__main__":
    main()
