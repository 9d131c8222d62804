"""Team quotas (issue 14, item 3): each quota set with `ember team set` answers a create (or a
resume) past it with 429 and a message naming it, and lets the next one through once freed."""

import secrets

import httpx
import pytest

from conftest import KEY


def team_key(daemon, **quota):
    """A fresh team with a key, and its quotas set with `ember team set`."""
    team = "quota-" + secrets.token_hex(4)
    key = daemon.ember("apikey", "create", "--team", team, "--name", "quota-test").stdout.strip()
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in quota.items()]
    shown = daemon.ember("team", "set", team, *flags).stdout
    for k, v in quota.items():
        assert f"{k.replace('_', '-')}={v}" in shown, shown
    return team, key


def call(daemon, key, method, path, **kw):
    return httpx.request(method, f"{daemon.url}{path}", headers={"X-API-Key": key}, timeout=180, **kw)


def create(daemon, key):
    return call(daemon, key, "POST", "/sandboxes", json={"templateID": "base", "timeout": 120})


def created(daemon, key):
    r = create(daemon, key)
    assert r.status_code == 201, r.text
    return r.json()["sandboxID"]


def refused(r, words):
    assert r.status_code == 429, r.text
    body = r.json()
    assert body["code"] == 429 and "team quota" in body["message"] and words in body["message"], body


def kill(daemon, key, sid):
    assert call(daemon, key, "DELETE", f"/sandboxes/{sid}").status_code == 204


def test_concurrent_sandboxes_quota_on_create_and_resume(daemon):
    team, key = team_key(daemon, max_sandboxes=1)
    a = created(daemon, key)
    try:
        refused(create(daemon, key), "at most 1 concurrent sandboxes")
        # The SDK carries the message to the caller.
        from e2b import Sandbox

        with pytest.raises(Exception, match="at most 1 concurrent sandboxes"):
            Sandbox.create(api_key=key)
        # Other teams are not held back by this one's quota.
        b_default = created(daemon, KEY)
        kill(daemon, KEY, b_default)
        # A paused sandbox holds no VM: another may run, and the paused one may not come back.
        assert call(daemon, key, "POST", f"/sandboxes/{a}/pause").status_code == 204
        b = created(daemon, key)
        refused(call(daemon, key, "POST", f"/sandboxes/{a}/connect", json={"timeout": 60}), "concurrent sandboxes")
        kill(daemon, key, b)
        assert call(daemon, key, "POST", f"/sandboxes/{a}/connect", json={"timeout": 60}).status_code == 201
    finally:
        kill(daemon, key, a)
    kill(daemon, key, created(daemon, key))


@pytest.mark.parametrize(
    "quota,words",
    [
        ({"max_vcpus": 1}, "at most 1 vCPUs in running sandboxes"),
        ({"max_memory_mb": 400}, "at most 400 MiB of memory in running sandboxes"),
    ],
)
def test_vcpu_and_memory_quotas(daemon, quota, words):
    # The session daemon's sandboxes (template base) have 1 vCPU and 256 MiB: one fits, two do not.
    _, key = team_key(daemon, **quota)
    a = created(daemon, key)
    try:
        refused(create(daemon, key), words)
    finally:
        kill(daemon, key, a)
    kill(daemon, key, created(daemon, key))


def test_minutes_per_month_quota(daemon):
    import time

    team, key = team_key(daemon, max_minutes_month=1)
    a = created(daemon, key)
    started = time.time()
    try:
        # Within the first minute the quota is not used up: a second sandbox may start.
        kill(daemon, key, created(daemon, key))
        time.sleep(max(0.0, 61 - (time.time() - started)))
    finally:
        kill(daemon, key, a)
    shown = daemon.ember("team", "show", team).stdout
    assert "used this month: 1 sandbox-minutes" in shown, shown
    refused(create(daemon, key), "1 sandbox-minutes per month")
    daemon.ember("team", "set", team, "--max-minutes-month", "2")
    kill(daemon, key, created(daemon, key))
    # `default` removes the team's own value (the session daemon has no default quota).
    assert "max-minutes-month=default" in daemon.ember("team", "set", team, "--max-minutes-month", "default").stdout


def test_team_cli_refuses_bad_input(daemon):
    import subprocess

    from conftest import EMBER

    for args in (["team", "set", "bad team!", "--max-sandboxes", "1"], ["team", "set", "t", "--max-vcpus", "-2"],
                 ["team", "set", "t", "--max-memory-mb", "lots"]):
        r = subprocess.run([EMBER, *args, "--data-dir", daemon.data_dir], capture_output=True, text=True)
        assert r.returncode != 0 and r.stderr, (args, r)
