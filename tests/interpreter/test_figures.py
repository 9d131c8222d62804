"""Figures for ARCHITECTURE.md and SPECIFICATION.md, printed (not asserted): memory of the server
and of each kernel at idle, `1+1` round trip on a warm context, kernel start time per language.
Run with `-s` to see them."""

import os
import statistics
import time

import httpx
from conftest import main_text


def _mem_kib(pid):
    """(RSS, PSS) in KiB."""
    rss = pss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                rss = int(line.split()[1])
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


def _tree(pid):
    """pid and all its descendants."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(c for c, pp in parents.items() if pp == p)
    return out


def _comm(pid):
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode(errors="replace")[:80]


def test_figures(server):
    h = server.headers
    # Kernel start time per language (a new context each, as POST /contexts waits for it).
    starts = {}
    for lang in ["python", "javascript", "typescript", "bash"]:
        t = time.perf_counter()
        r = httpx.post(f"{server.url}/contexts", json={"language": lang}, timeout=120)
        starts[lang] = time.perf_counter() - t
        assert r.status_code == 200, r.text
        ctx = r.json()["id"]
        # First cell in it (envd env vars loaded then).
        t = time.perf_counter()
        server.execute("1", context_id=ctx)
        first = time.perf_counter() - t
        print(f"\nFIGURE kernel start {lang}: {starts[lang] * 1000:.0f} ms (POST /contexts), first cell {first * 1000:.0f} ms")
        httpx.delete(f"{server.url}/contexts/{ctx}")

    # 1+1 round trip on the warm default contexts.
    for lang, code in [("python", "1+1"), ("javascript", "1+1")]:
        server.execute(code, language=lang)
        times = []
        with httpx.Client() as client:
            for _ in range(50):
                t = time.perf_counter()
                with client.stream("POST", f"{server.url}/execute", json={"code": code, "language": lang}, headers=h) as r:
                    lines = list(r.iter_lines())
                times.append(time.perf_counter() - t)
                assert '"text":"2"' in "".join(lines), lines
        times.sort()
        print(
            f"FIGURE 1+1 round trip {lang}: p50 {statistics.median(times) * 1000:.1f} ms, "
            f"p90 {times[44] * 1000:.1f} ms (50 calls, envd access check included)"
        )

    # Memory at idle: the server, then each kernel process tree.
    time.sleep(1)
    rss, pss = _mem_kib(server.proc.pid)
    print(f"FIGURE server idle: RSS {rss / 1024:.1f} MiB, PSS {pss / 1024:.1f} MiB")
    for child in _tree(server.proc.pid)[1:]:
        try:
            crss, cpss = _mem_kib(child)
            print(f"FIGURE kernel process {child} ({_comm(child)}): RSS {crss / 1024:.1f} MiB, PSS {cpss / 1024:.1f} MiB")
        except OSError:
            pass
    assert main_text(server.execute("1+1")) == "2"
