"""The agent server killed inside a guest (as root, as a crash or the OOM killer would): PID 1
starts it again, and the new server still refuses calls without the token, serves them with it
and has the sandbox's env vars, because it reads back the state `/init` saved.

Named to run last: killing the server ends every stream open to it, so the processes the
suite's other tests attach to are cut off. It runs only in guest mode and only when
EMBER_SDK_KILL_AGENT=1, because the stream `ember run` holds for its command is cut off too, which
makes `ember run` fail and tear the sandbox down: set it only when the sandbox outlives that
(for example when it is kept by `ember serve`).
"""

import os
import time

import httpx
import pytest

from conftest import assert_fails_closed, make_sandbox

# The server's command line (PID 1 runs `/usr/local/bin/ember-agent serve --guest`); anchored,
# so that the shell running pgrep, whose command line holds this pattern, does not match.
SERVER = "'^[^ ]*ember-agent serve'"


def _server_pid(sbx):
    out = sbx.commands.run(f"pgrep -f {SERVER}").stdout.split()
    assert len(out) == 1, out
    return int(out[0])


def test_a_server_killed_in_the_guest_comes_back_refusing_calls_without_the_token(agent):
    if agent["mode"] != "guest":
        pytest.skip("kills the agent server inside a guest; the host mode restarts it in test_security.py")
    if os.environ.get("EMBER_SDK_KILL_AGENT") != "1":
        pytest.skip("EMBER_SDK_KILL_AGENT=1 not set (killing the server also ends `ember run`'s stream)")
    sbx = make_sandbox(agent)
    old = _server_pid(sbx)
    try:
        # The command's own stream dies with the server, or it answers first: either is fine.
        sbx.commands.run(f"sudo kill -9 {old}", timeout=10)
    except Exception:  # noqa: BLE001
        pass
    deadline = time.time() + 10
    new = None
    while time.time() < deadline:
        try:
            h = httpx.get(f"{agent['url']}/health", timeout=1)
            if h.status_code == 204:
                new = _server_pid(make_sandbox(agent))
                if new != old:
                    break
        except Exception:  # noqa: BLE001 - the old server dying, or the new one not up yet
            pass
        time.sleep(0.2)
    assert new is not None and new != old, "PID 1 did not start the agent server again within 10 s"
    assert_fails_closed(agent)
