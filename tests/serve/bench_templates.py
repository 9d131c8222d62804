"""Template-build benchmark (prints figures, asserts nothing about speed): as root, with a release
build and `base` built (`ember template build base`),

    target/sdk-venv/bin/python tests/serve/bench_templates.py

Starts an `ember serve` of its own (no pool) and measures, with the official `e2b` SDK:
- the build time of a 3-step Dockerfile (ENV, RUN, COPY) with a cold layer cache (every step
  runs), with a warm one (every step cached), and after changing its last step;
- create p50/p99 over 20 from the custom template, against 20 from `base` (no pool for either:
  both restore a saved state on the create path);
- disk used per template: each build's saved sandbox and the layers (allocated bytes), so shared
  layers count once.
`BENCH_ROUNDS` changes the 20.
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from conftest import KEY, Daemon, free_port, pct  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "20"))


def report(label, times):
    print(f"{label}: p50 {statistics.median(times):.0f} ms, p99 {pct(times, 99):.0f} ms "
          f"(min {min(times):.0f}, max {max(times):.0f}, n={len(times)})", flush=True)


def allocated(path):
    if os.path.isfile(path):
        return os.lstat(path).st_blocks * 512
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
            except OSError:
                pass
    return total


def dockerfile(last):
    return f"""FROM e2bdev/base
ENV BENCH=1
RUN python3 -c 'print(6 * 7)' > /tmp/answer
COPY data.txt /home/user/{last}
"""


def timed_build(template, name):
    from e2b import Template

    t0 = time.perf_counter()
    Template.build(template, name, request_timeout=1800)
    return time.perf_counter() - t0


def creates(template_id):
    from e2b import Sandbox

    times = []
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        s = Sandbox.create(template_id)
        times.append((time.perf_counter() - t0) * 1000)
        s.kill()
    return times


def main():
    from e2b import Template

    data_dir = tempfile.mkdtemp(prefix="ember-bench-templates-")
    os.chmod(data_dir, 0o755)
    d = Daemon(data_dir, free_port())
    d.start("--destroy-on-exit", "--pool", "0")
    os.environ.update(E2B_API_URL=d.url, E2B_SANDBOX_URL=d.url, E2B_API_KEY=KEY)
    try:
        with tempfile.TemporaryDirectory() as ctx:
            with open(f"{ctx}/data.txt", "w") as f:
                f.write("bench data\n" * 1000)
            creates("base")  # the base template's snapshot, made once
            tpl = Template(file_context_path=ctx).from_dockerfile(dockerfile("a.txt"))
            print(f"3-step Dockerfile, cold layer cache: {timed_build(tpl, 'bench-tpl'):.1f} s", flush=True)
            print(f"the same, warm layer cache: {timed_build(tpl, 'bench-tpl'):.1f} s", flush=True)
            changed = Template(file_context_path=ctx).from_dockerfile(dockerfile("b.txt"))
            print(f"the last step changed: {timed_build(changed, 'bench-tpl'):.1f} s", flush=True)
        report("create from the custom template", creates("bench-tpl"))
        report("create from base (no pool)", creates("base"))
        templates = os.path.join(data_dir, "templates")
        for build in sorted(os.listdir(templates)):
            print(f"template build {build}: {allocated(os.path.join(templates, build)) / 2**20:.0f} MiB allocated")
        layers = os.path.join(data_dir, "layers")
        names = [n for n in os.listdir(layers) if not n.endswith(".partial")]
        print(f"layers: {len(names)}, {allocated(layers) / 2**20:.0f} MiB allocated in all", flush=True)
        for n in names:
            disk = os.path.join(layers, n, "disk.qcow2")
            state = os.path.join(layers, n, "state")
            print(f"  layer {n[:12]}: disk {allocated(disk) / 2**20:.1f} MiB, state {allocated(state) / 2**20:.0f} MiB")
    finally:
        d.stop()
        subprocess.run(["rm", "-rf", data_dir], check=False)


if __name__ == "__main__":
    main()
