"""Processes through the SDK's `commands`: output, errors, env, cwd, users, stdin, background
processes, re-attaching, signals, time-outs and many at once."""

import threading
import time

import pytest
from e2b import CommandExitException, InvalidArgumentException, TimeoutException


def test_run_captures_stdout_and_exit_code(sbx):
    r = sbx.commands.run("echo hello; echo world")
    assert r.stdout == "hello\nworld\n"
    assert r.stderr == ""
    assert r.exit_code == 0


def test_nonzero_exit_raises_with_both_streams(sbx):
    with pytest.raises(CommandExitException) as e:
        sbx.commands.run("echo out; echo err >&2; exit 3")
    assert e.value.exit_code == 3
    assert e.value.stdout == "out\n"
    assert e.value.stderr == "err\n"


def test_env_vars_sandbox_level_then_request(sbx):
    r = sbx.commands.run('echo "$EMBER_SANDBOX_ENV $SHARED $ONLY_HERE"', envs={"SHARED": "request", "ONLY_HERE": "x"})
    assert r.stdout == "from-init request x\n"


def test_cwd_and_missing_cwd(sbx, workdir):
    assert sbx.commands.run("pwd", cwd=workdir).stdout.strip() == workdir
    with pytest.raises(InvalidArgumentException):
        sbx.commands.run("pwd", cwd="/no/such/dir")


def test_default_user_and_root(sbx, home):
    r = sbx.commands.run("echo $USER; id -u; echo $HOME; pwd")
    assert r.stdout.split() == ["user", "1000", home, home]
    assert sbx.commands.run("id -u", user="root").stdout.strip() == "0"


def test_files_created_by_commands_belong_to_the_user(sbx, workdir):
    sbx.commands.run(f"touch {workdir}/made-by-user")
    assert sbx.files.get_info(f"{workdir}/made-by-user").owner == "user"


def test_output_streams_while_running(sbx):
    seen = []
    started = time.time()
    sbx.commands.run("echo first; sleep 2; echo second", on_stdout=lambda s: seen.append((time.time() - started, s)))
    assert [s for _, s in seen] == ["first\n", "second\n"]
    assert seen[1][0] - seen[0][0] >= 1.5, "first line arrived before the command ended"


def test_background_list_and_kill(sbx):
    h = sbx.commands.run("sleep 60", background=True)
    assert h.pid in [p.pid for p in sbx.commands.list()]
    assert sbx.commands.kill(h.pid) is True
    assert h.pid not in [p.pid for p in sbx.commands.list()], "a killed process is gone when kill returns"
    with pytest.raises(CommandExitException) as e:
        h.wait()
    assert e.value.exit_code == -1
    assert "signal" in (e.value.error or "") or e.value.exit_code == -1
    assert h.pid not in [p.pid for p in sbx.commands.list()]
    assert sbx.commands.kill(h.pid) is False


def test_stdin_send_and_close(sbx):
    h = sbx.commands.run("cat", background=True, stdin=True)
    sbx.commands.send_stdin(h.pid, "line one\n")
    sbx.commands.send_stdin(h.pid, b"line two\n")
    sbx.commands.close_stdin(h.pid)
    assert h.wait().stdout == "line one\nline two\n"


def test_connect_reattaches_and_output_resumes(sbx):
    h = sbx.commands.run("sleep 1; for i in 1 2 3; do echo n$i; sleep 0.3; done", background=True)
    h.disconnect()
    again = sbx.commands.connect(h.pid)
    r = again.wait()
    assert "n3" in r.stdout
    assert r.exit_code == 0


def test_timeout_kills_the_process(sbx):
    with pytest.raises(TimeoutException):
        sbx.commands.run("sleep 30", timeout=2)
    deadline = time.time() + 5
    while [p for p in sbx.commands.list() if "sleep 30" in " ".join(p.args)] and time.time() < deadline:
        time.sleep(0.1)
    assert not [p for p in sbx.commands.list() if "sleep 30" in " ".join(p.args)], "killed at its deadline"


def test_many_processes_at_once(sbx):
    results = {}

    def one(i):
        results[i] = sbx.commands.run(f"sleep 0.5; echo {i}").stdout.strip()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: str(i) for i in range(10)}


def test_invalid_utf8_output_does_not_break_the_stream(sbx):
    r = sbx.commands.run("printf 'ok\\377\\376end'")
    assert r.stdout.startswith("ok") and r.stdout.endswith("end")
