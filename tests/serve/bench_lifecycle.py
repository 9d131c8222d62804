"""Lifecycle benchmark (prints figures, asserts nothing about speed): as root, with a release
build,

    target/sdk-venv/bin/python tests/serve/bench_lifecycle.py

Starts an `ember serve` of its own (no pool) and measures with the official SDK (`e2b`,
pinned), N rounds each, the machine otherwise idle: a full pause and the `connect` that
resumes it; a filesystem-only pause and the `connect` that boots from its disk (until a
command answers); the first command to a paused sandbox with auto-resume (the resume on its
path); and a fork of 1 and of 4 copies.
"""

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from conftest import Daemon, free_port  # noqa: E402
from test_network import finish_daemon, new_data_dir, sdk_env  # noqa: E402

from e2b import Sandbox, SandboxState  # noqa: E402

N = 5


def ms(t0):
    return (time.perf_counter() - t0) * 1000


def show(what, values):
    print(f"{what:<58} p50 {statistics.median(values):7.0f} ms   max {max(values):7.0f} ms   n={len(values)}")


def main():
    d = Daemon(new_data_dir("ember-bench-lifecycle-"), free_port())
    d.start("--interpreter-pool", "0")
    try:
        with sdk_env(d):
            run(d)
    finally:
        left, dirs = finish_daemon(d)
        if left or dirs:
            print(f"left behind: {left} {dirs}")


def run(d):
    figures = {k: [] for k in ("pause", "resume", "fs pause", "fs resume", "auto", "fork1", "fork4")}
    sbx = Sandbox.create(timeout=3600)
    try:
        for _ in range(N):
            t0 = time.perf_counter()
            sbx.pause()
            figures["pause"].append(ms(t0))
            t0 = time.perf_counter()
            sbx = Sandbox.connect(sbx.sandbox_id, timeout=3600)
            sbx.commands.run("true")
            figures["resume"].append(ms(t0))
        for _ in range(N):
            t0 = time.perf_counter()
            sbx.pause(mode="filesystem")
            figures["fs pause"].append(ms(t0))
            t0 = time.perf_counter()
            sbx = Sandbox.connect(sbx.sandbox_id, timeout=3600, request_timeout=300)
            sbx.commands.run("true")
            figures["fs resume"].append(ms(t0))
        for n, key in ((1, "fork1"), (4, "fork4")):
            for _ in range(2 if n == 4 else N):
                t0 = time.perf_counter()
                forks = sbx.fork(count=n)
                figures[key].append(ms(t0))
                for f in forks:
                    f.kill()
    finally:
        sbx.kill()
    for _ in range(N):
        s = Sandbox.create(timeout=5, lifecycle={"on_timeout": "pause", "auto_resume": True})
        try:
            deadline = time.time() + 60
            while Sandbox.get_info(s.sandbox_id).state != SandboxState.PAUSED and time.time() < deadline:
                time.sleep(0.2)
            t0 = time.perf_counter()
            s.commands.run("true", request_timeout=120)
            figures["auto"].append(ms(t0))
        finally:
            s.kill()
    with open(os.path.join(d.data_dir, "daemon.log")) as f:
        accel = "tcg" if "TCG" in f.read() else "kvm"
    print(f"accelerator {accel}, 2 vCPUs and 512 MiB per sandbox")
    show("pause (memory and disk)", figures["pause"])
    show("connect that resumes it, until a command answers", figures["resume"])
    show("pause, filesystem only", figures["fs pause"])
    show("connect that boots from its disk, until a command answers", figures["fs resume"])
    show("first command to a paused auto-resume sandbox", figures["auto"])
    show("fork, 1 copy", figures["fork1"])
    show("fork, 4 copies", figures["fork4"])


if __name__ == "__main__":
    main()
