"""`ember sandbox list|info|kill|pause|resume|logs|exec|shell` against a real `ember serve`, on
sandboxes made with the official SDK.

What is checked: list (a table, `--json`, the state and metadata filters) and info show a
sandbox, info never prints its access token; exec streams stdout and stderr apart and exits with
the command's code; logs show the command; pause and resume keep a file; kill ends it and a second
kill fails clearly; the shell, driven through a real PTY (Python's `pty`): a command, a resize
seen by `stty size`, Ctrl-C ending a `sleep`, and `exit 7` as ember's exit code; a bad key and a
missing command are clear errors.

Run: EMBER_AGENT_BIN=$PWD/target/release/ember-agent \
    target/sdk-venv/bin/python -m pytest tests/serve/test_cli_sandbox.py -q -p no:cacheprovider
"""

import fcntl
import json
import os
import pty
import select
import signal
import struct
import subprocess
import termios
import time

import pytest
from e2b import Sandbox

from conftest import EMBER, KEY


def env(daemon, key=KEY):
    e = {k: v for k, v in os.environ.items() if not k.startswith(("E2B_", "EMBER_URL", "EMBER_API_KEY"))}
    e.update(EMBER_URL=daemon.url, EMBER_API_KEY=key)
    return e


def cli(daemon, *args, key=KEY, check=True, timeout=120):
    r = subprocess.run([EMBER, "sandbox", *args], capture_output=True, text=True, env=env(daemon, key), timeout=timeout)
    if check:
        assert r.returncode == 0, (args, r.returncode, r.stdout, r.stderr)
    return r


@pytest.fixture
def sbx(daemon):
    s = Sandbox.create(metadata={"suite": "cli-sandbox"})
    yield s
    try:
        s.kill()
    except Exception:
        pass


def test_list_info_exec_logs_pause_resume_kill(daemon, sbx):
    sid = sbx.sandbox_id
    table = cli(daemon, "list").stdout
    row = next(line for line in table.splitlines() if line.startswith(sid))
    assert "running" in row and "suite=cli-sandbox" in row, table
    listed = json.loads(cli(daemon, "list", "--json", "--metadata", "suite=cli-sandbox").stdout)
    assert [s["sandboxID"] for s in listed] == [sid], listed
    assert json.loads(cli(daemon, "list", "--json", "--metadata", "suite=other").stdout) == []
    assert sid not in cli(daemon, "list", "--state", "paused").stdout

    info = cli(daemon, "info", sid).stdout
    assert sid in info and "running" in info, info
    detail = json.loads(cli(daemon, "info", sid, "--json").stdout)
    assert detail["sandboxID"] == sid and "envdAccessToken" not in detail, detail

    r = cli(daemon, "exec", sid, "--", "bash", "-c", "echo out-$((2*3)); echo err >&2; exit 3", check=False)
    assert (r.returncode, r.stdout, r.stderr) == (3, "out-6\n", "err\n"), r
    r = cli(daemon, "exec", sid, "--env", "WHO=cli", "--cwd", "/tmp", "--", "bash", "-c", 'echo "$WHO in $PWD as $(whoami)"')
    assert r.stdout == "cli in /tmp as user\n", r
    assert cli(daemon, "exec", sid, "--user", "root", "--", "whoami").stdout == "root\n"
    cli(daemon, "exec", sid, "--", "bash", "-c", "echo kept > /home/user/kept")
    logs = cli(daemon, "logs", sid).stdout
    assert "process started" in logs and "cmd=bash" in logs, logs

    assert "paused" in cli(daemon, "pause", sid).stdout
    assert sid in cli(daemon, "list", "--state", "paused").stdout
    r = cli(daemon, "exec", sid, "--", "true", check=False)
    assert r.returncode != 0 and "paused" in r.stderr, r
    assert "running until" in cli(daemon, "resume", sid, "--timeout", "120").stdout
    assert cli(daemon, "exec", sid, "--", "cat", "/home/user/kept").stdout == "kept\n"

    assert "killed" in cli(daemon, "kill", sid).stdout
    r = cli(daemon, "kill", sid, check=False)
    assert r.returncode != 0 and "404" in r.stderr, r


def test_bad_input_is_a_clear_error(daemon):
    r = cli(daemon, "list", key="e2b_" + "0" * 40, check=False)
    assert r.returncode != 0 and "API key" in r.stderr, r
    r = cli(daemon, "info", "no-such-sandbox", check=False)
    assert r.returncode != 0 and "404" in r.stderr, r
    r = cli(daemon, "exec", "no-such-sandbox", check=False)
    assert r.returncode != 0 and "CMD" in r.stderr, r
    r = subprocess.run([EMBER, "sandbox", "shell", "x"], capture_output=True, text=True, env=env(daemon),
                       stdin=subprocess.DEVNULL, timeout=60)
    assert r.returncode != 0 and "needs a terminal" in r.stderr, r


class Terminal:
    """`ember sandbox shell ID` on a real PTY."""

    def __init__(self, daemon, sid, rows=30, cols=100):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.execve(EMBER, [EMBER, "sandbox", "shell", sid], env(daemon))
        self.resize(rows, cols)
        self.seen = b""
        self.transcript = b""

    def resize(self, rows, cols):
        # Setting the size on the master sends SIGWINCH to the terminal's foreground process.
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def send(self, text):
        os.write(self.fd, text.encode())

    def expect(self, needle, timeout=60):
        deadline = time.time() + timeout
        while needle.encode() not in self.seen:
            left = deadline - time.time()
            assert left > 0, f"{needle!r} not seen in {self.seen[-2000:]!r}"
            ready, _, _ = select.select([self.fd], [], [], min(left, 1))
            if ready:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:
                    chunk = b""
                assert chunk, f"the shell ended before {needle!r}: {self.seen[-2000:]!r}"
                self.seen += chunk
                self.transcript += chunk
        self.seen = self.seen[self.seen.index(needle.encode()) + len(needle):]

    def wait(self, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            try:
                if select.select([self.fd], [], [], 0.2)[0]:
                    os.read(self.fd, 65536)
            except OSError:
                time.sleep(0.2)
        os.kill(self.pid, signal.SIGKILL)
        raise AssertionError("the shell did not end")


def test_shell_through_a_pty(daemon, sbx):
    t = Terminal(daemon, sbx.sandbox_id)
    try:
        t.send("echo hi-$((6*7))\r")
        t.expect("hi-42")
        t.send("stty size\r")
        t.expect("30 100")
        t.resize(40, 120)
        time.sleep(1)
        t.send("stty size\r")
        t.expect("40 120")
        t.send("sleep 100; echo done-$((40+2))\r")
        time.sleep(2)
        t.send("\x03")
        t.send("echo after-$((1+1))\r")
        t.expect("after-2", timeout=20)
        assert b"done-42" not in t.transcript, t.transcript
        t.send("exit 7\r")
        assert t.wait() == 7
    finally:
        try:
            os.kill(t.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.close(t.fd)
