"""PTYs through the SDK's `pty`: a shell, input, resize, exit and kill."""

import threading
import time

from e2b.sandbox.commands.command_handle import PtySize


def _wait_in_thread(h, out):
    result = {}

    def run():
        try:
            result["r"] = h.wait(on_pty=out.extend)
        except Exception as e:  # the exit of a killed PTY raises
            result["e"] = e

    t = threading.Thread(target=run)
    t.start()
    return t, result


def _wait_for(out, needle, timeout=30):
    deadline = time.time() + timeout
    while needle not in out and time.time() < deadline:
        time.sleep(0.1)
    assert needle in out, out.decode(errors="replace")


def test_pty_shell_input_resize_and_exit(sbx):
    out = bytearray()
    h = sbx.pty.create(PtySize(rows=24, cols=80))
    t, result = _wait_in_thread(h, out)
    sbx.pty.send_stdin(h.pid, b"stty size; tty; echo marker-$((6*7))\n")
    _wait_for(out, b"marker-42")
    assert b"24 80" in out
    assert b"/dev/pts/" in out
    sbx.pty.resize(h.pid, PtySize(rows=50, cols=132))
    sbx.pty.send_stdin(h.pid, b"stty size; exit 0\n")
    t.join(30)
    assert result["r"].exit_code == 0, result
    assert b"50 132" in out


def test_pty_kill(sbx):
    out = bytearray()
    h = sbx.pty.create(PtySize(rows=10, cols=40))
    t, result = _wait_in_thread(h, out)
    assert sbx.pty.kill(h.pid) is True
    t.join(30)
    assert "e" in result, "a killed PTY ends with an error"
    assert h.pid not in [p.pid for p in sbx.commands.list()]
