"""A real `ember serve` for the official E2B SDK to drive.

The daemon runs as a subprocess with a temporary data directory, the API key in EMBER_API_KEY
(team `default`) and a second key for team `other` made with `ember apikey create`. The SDK is
pointed at it the way the README says: E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY.
"""

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import httpx
import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
EMBER = os.environ.get("EMBER_BIN", os.path.join(ROOT, "target", "release", "ember"))
KEY = "e2b_" + secrets.token_hex(20)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    def __init__(self, data_dir, port):
        self.data_dir = data_dir
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.proc = None

    def start(self, *extra):
        """Starts `ember serve` with `extra` flags; without a code-interpreter pool unless
        `extra` names one (idle code-interpreter guests cost CPU, and tests that count sandbox
        directories count only their own)."""
        if "--interpreter-pool" not in extra:
            extra = (*extra, "--interpreter-pool", "0")
        self.extra = extra
        env = {**os.environ, "EMBER_API_KEY": KEY, "EMBER_LOG": "info"}
        log = open(os.path.join(self.data_dir, "daemon.log"), "a")
        self.proc = subprocess.Popen(
            [EMBER, "serve", "--listen", f"127.0.0.1:{self.port}", "--data-dir", self.data_dir, *extra],
            env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
        )
        deadline = time.time() + 600
        while time.time() < deadline:
            assert self.proc.poll() is None, f"ember serve exited: {self.log()}"
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 204:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("ember serve did not come up")

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=60)

    def restart(self, sig=signal.SIGTERM):
        """Stops the daemon with `sig` and starts it again with the flags it had."""
        self.stop(sig)
        self.start(*self.extra)

    def log(self):
        with open(os.path.join(self.data_dir, "daemon.log")) as f:
            return f.read()[-4000:]

    def ember(self, *args):
        return subprocess.run([EMBER, *args, "--data-dir", self.data_dir], capture_output=True, text=True, check=True)


def pct(values, p):
    """The p-th percentile of `values` (nearest rank), for the benchmarks."""
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def qemu_processes(needle):
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmd and "qemu-system" in cmd:
            found.append((int(pid), cmd))
    return found


def end_after_kill(d, *args):
    """The end of a test daemon that its tests kill -9: killed once more, started again with
    `args` and `--destroy-on-exit` to clean up, stopped; then no QEMU of it may be left."""
    d.stop(signal.SIGKILL)
    d.start(*args, "--destroy-on-exit")
    d.stop()
    left = qemu_processes(d.data_dir)
    for pid, _ in left:
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(d.data_dir, ignore_errors=True)
    assert not left, f"QEMU processes left: {left}"


@pytest.fixture(scope="session")
def daemon():
    data_dir = tempfile.mkdtemp(prefix="ember-serve-test-")
    os.chmod(data_dir, 0o755)  # the unprivileged QEMU user must reach the sandboxes' disks
    d = Daemon(data_dir, free_port())
    metrics_port = free_port()
    d.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    d.start("--destroy-on-exit", "--metrics-listen", f"127.0.0.1:{metrics_port}")
    os.environ.update(E2B_API_URL=d.url, E2B_SANDBOX_URL=d.url, E2B_API_KEY=KEY)
    yield d
    d.stop()
    left = qemu_processes(data_dir)
    for pid, _ in left:
        os.kill(pid, signal.SIGKILL)
    sandboxes = os.path.join(data_dir, "sandboxes")
    left_dirs = os.listdir(sandboxes) if os.path.isdir(sandboxes) else []
    left_netns = [n for n in os.listdir("/run/netns") if n.removeprefix("ember-") in left_dirs] if left_dirs else []
    if os.environ.get("EMBER_KEEP_DATA") == "1":
        print(f"\nkept the daemon's data directory: {data_dir}")
    else:
        shutil.rmtree(data_dir, ignore_errors=True)
    assert not left, f"QEMU processes left after the daemon stopped: {left}"
    assert not left_dirs, f"sandbox directories left: {left_dirs} (namespaces {left_netns})"


@pytest.fixture(scope="session")
def other_key(daemon):
    return daemon.ember("apikey", "create", "--team", "other", "--name", "tests").stdout.strip()


@pytest.fixture
def sbx(daemon):
    from e2b import Sandbox

    s = Sandbox.create(metadata={"suite": "serve"}, envs={"FROM_CREATE": "yes"})
    yield s
    try:
        s.kill()
    except Exception:
        pass
