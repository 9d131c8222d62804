"""Fixtures for the code-interpreter tests: the real `ember-interpreter` on the host (as root,
kernels as an unprivileged user), real Jupyter kernels (ipykernel, bash_kernel, Deno) from
target/interp-venv and target/interp-deno, and a stand-in for envd's `GET /envs` that checks the
access token.

Set up with tests/interpreter/setup.sh. Environment: INTERPRETER_BIN (default: the static release build, built if missing),
INTERP_VENV, INTERP_DENO, INTERP_USER (default emberci, created if missing; needs root)."""

import contextlib
import http.server
import json
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time

import httpx
import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
VENV = os.environ.get("INTERP_VENV", f"{ROOT}/target/interp-venv")
DENO = os.environ.get("INTERP_DENO", f"{ROOT}/target/interp-deno/node_modules/@deno/linux-x64-glibc/deno")
TOKEN = "interp-test-token"
SANDBOX_ENV = {"SANDBOX_VAR": "from-envd", "SHARED": "sandbox-value"}
STATIC_BIN = f"{ROOT}/target/x86_64-unknown-linux-gnu/release/ember-interpreter"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Envd(http.server.BaseHTTPRequestHandler):
    """envd's /envs: 401 JSON without the right token, the sandbox's env vars with it."""

    calls = 0

    def do_GET(self):
        type(self).calls += 1
        if self.path != "/envs":
            self.send_response(404)
            self.end_headers()
            return
        if self.headers.get("X-Access-Token") != TOKEN:
            body = json.dumps({"code": 401, "message": "unauthorized access, please provide a valid access token"})
            self.send_response(401)
        else:
            body = json.dumps(SANDBOX_ENV)
            self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass


@pytest.fixture(scope="session")
def envd():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Envd)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


@pytest.fixture(scope="session")
def kernel_user():
    if os.geteuid() != 0:
        pytest.skip("needs root (kernels run as another user)")
    name = os.environ.get("INTERP_USER", "emberci")
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "-m", "-s", "/bin/bash", name], check=True)
        pw = pwd.getpwnam(name)
    return pw


def write_kernelspecs(root):
    """The kernelspecs the guest image installs, pointed at the test venv and Deno."""
    py = f"{VENV}/bin/python"
    specs = {
        "python3": {
            "argv": [py, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3",
            "language": "python",
            "interrupt_mode": "signal",
            "env": {"PYDEVD_DISABLE_FILE_VALIDATION": "1"},
        },
        "bash": {
            "argv": [py, "-m", "bash_kernel", "-f", "{connection_file}"],
            "display_name": "Bash",
            "language": "bash",
            "env": {"PS1": "$"},
        },
        "deno": {
            "argv": [DENO, "jupyter", "--kernel", "--conn", "{connection_file}"],
            "display_name": "Deno",
            "language": "typescript",
            "env": {"NO_COLOR": "1", "DENO_NO_UPDATE_CHECK": "1"},
            "interrupt_mode": "message",
        },
    }
    for name, spec in specs.items():
        os.makedirs(f"{root}/{name}", exist_ok=True)
        with open(f"{root}/{name}/kernel.json", "w") as f:
            json.dump(spec, f)


def interpreter_bin():
    path = os.environ.get("INTERPRETER_BIN")
    if path:
        return path
    subprocess.run(
        ["cargo", "build", "--release", "-p", "ember-interpreter", "--target", "x86_64-unknown-linux-gnu"],
        cwd=ROOT,
        check=True,
        env={**os.environ, "RUSTFLAGS": "-C target-feature=+crt-static"},
    )
    return STATIC_BIN


class Server:
    def __init__(self, url, proc, log, runtime_dir):
        self.url, self.proc, self.log, self.runtime_dir = url, proc, log, runtime_dir
        self.headers = {"X-Access-Token": TOKEN}

    def execute(self, code, timeout=120, **body):
        """Runs a cell; returns the list of events."""
        with httpx.stream(
            "POST", f"{self.url}/execute", json={"code": code, **body}, headers=self.headers, timeout=timeout
        ) as r:
            assert r.status_code == 200, r.read()
            return [json.loads(line) for line in r.iter_lines() if line]

    def log_text(self):
        with open(self.log) as f:
            return f.read()


def start_server(envd, user, cwd, extra=(), wait=True):
    kernels = tempfile.mkdtemp(prefix="ember-kernels-")
    write_kernelspecs(kernels)
    runtime = tempfile.mkdtemp(prefix="ember-interp-run-")
    port = free_port()
    log = f"{runtime}.log"
    args = [
        interpreter_bin(),
        "--listen", f"127.0.0.1:{port}",
        "--kernels", kernels,
        "--user", user.pw_name,
        "--cwd", cwd,
        "--envd", envd,
        "--runtime-dir", runtime,
        *extra,
    ]
    with open(log, "w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env={"PATH": os.environ["PATH"], "EMBER_INTERPRETER_LOG": os.environ.get("EMBER_INTERPRETER_LOG", "info")})
    srv = Server(f"http://127.0.0.1:{port}", proc, log, runtime)
    srv.kernels = kernels
    if wait:
        wait_healthy(srv)
    return srv


def wait_healthy(srv, deadline=120):
    end = time.time() + deadline
    while time.time() < end:
        assert srv.proc.poll() is None, srv.log_text()
        try:
            if httpx.get(f"{srv.url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("not healthy in time:\n" + srv.log_text())


def stop_server(srv):
    """Stops the server and removes what it made; returns its log."""
    srv.proc.terminate()
    try:
        srv.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        srv.proc.kill()
    text = srv.log_text()
    shutil.rmtree(srv.runtime_dir, ignore_errors=True)
    shutil.rmtree(srv.kernels, ignore_errors=True)
    with contextlib.suppress(OSError):
        os.remove(srv.log)
    return text


@pytest.fixture(scope="session")
def server(envd, kernel_user):
    srv = start_server(envd, kernel_user, kernel_user.pw_dir)
    yield srv
    log = stop_server(srv)
    print("\n--- interpreter log (tail) ---\n" + log[-3000:])


def events_of(events, kind):
    return [e for e in events if e["type"] == kind]


def stdout_of(events):
    return "".join(e["text"] for e in events_of(events, "stdout"))


def main_text(events):
    for e in events_of(events, "result"):
        if e.get("is_main_result"):
            return e.get("text")
    return None
