"""Listing as E2B lists (official SDK `e2b`, pinned, and raw REST where the SDK sends no such
parameter): newest first by default, `order`, `startedAfter`/`startedBefore`, `template`,
`X-Total-Running`, and pages that neither repeat nor skip a sandbox while others are created
or paused between them. Also what code inside a sandbox sees of E2B (`E2B_SANDBOX`,
`E2B_SANDBOX_ID`, `E2B_TEMPLATE_ID`) and CORS preflights answered by the daemon.

Run: target/sdk-venv/bin/python -m pytest tests/serve/test_list_and_env.py -q -p no:cacheprovider
"""

import datetime
import time
import uuid

import httpx
from e2b import Sandbox, SandboxQuery

from conftest import KEY

H = {"X-API-Key": KEY}


def ids(items):
    return [s.sandbox_id for s in items]


def test_order_time_and_template_filters(daemon):
    tag = {"list_test": uuid.uuid4().hex}
    made = []
    try:
        for _ in range(3):
            made.append(Sandbox.create(metadata=tag))
            time.sleep(0.05)
        q = SandboxQuery(metadata=tag)
        newest_first = ids(Sandbox.list(query=q).next_items())
        assert newest_first == [s.sandbox_id for s in reversed(made)], "E2B's default order: newest first"
        assert ids(Sandbox.list(query=q, order="asc").next_items()) == [s.sandbox_id for s in made]
        started = [Sandbox.get_info(s.sandbox_id).started_at for s in made]
        after = ids(Sandbox.list(query=SandboxQuery(metadata=tag, started_after=started[1])).next_items())
        assert sorted(after) == sorted(s.sandbox_id for s in made[1:])
        assert ids(Sandbox.list(query=SandboxQuery(metadata=tag, template="base")).next_items()) == newest_first
        assert ids(Sandbox.list(query=SandboxQuery(metadata=tag, template="python")).next_items()) == []
        before = started[1].astimezone(datetime.timezone.utc).isoformat().replace("+00:00", "Z")
        r = httpx.get(
            f"{daemon.url}/v2/sandboxes",
            params={"metadata": f"list_test={tag['list_test']}", "startedBefore": before, "order": "asc"},
            headers=H,
        )
        assert r.status_code == 200, r.text
        assert [s["sandboxID"] for s in r.json()] == [s.sandbox_id for s in made[:2]]
        running = int(r.headers["x-total-running"])
        assert running >= 3
        for bad in ({"order": "sideways"}, {"startedAfter": "yesterday"}, {"nextToken": "../x"}):
            r = httpx.get(f"{daemon.url}/v2/sandboxes", params=bad, headers=H)
            assert r.status_code == 400 and r.json()["message"], r.text
    finally:
        for s in made:
            s.kill()


def test_pages_neither_repeat_nor_skip_while_sandboxes_come_and_pause(daemon):
    tag = {"page_test": uuid.uuid4().hex}
    made = [Sandbox.create(metadata=tag) for _ in range(4)]
    late = None
    try:
        paginator = Sandbox.list(query=SandboxQuery(metadata=tag), limit=1)
        seen = ids(paginator.next_items())
        # Between pages: one already listed is paused, a new one is made, one not yet listed is
        # paused. The new one is newer than the token, so it belongs before it and is not seen.
        made[3].pause()
        late = Sandbox.create(metadata=tag)
        made[1].pause()
        while paginator.has_next:
            seen += ids(paginator.next_items())
        assert seen == [s.sandbox_id for s in reversed(made)], seen
    finally:
        for s in made + [late]:
            if s is not None:
                s.kill()


def test_code_inside_sees_e2b_identity(daemon):
    sbx = Sandbox.create()
    try:
        out = sbx.commands.run("echo $E2B_SANDBOX $E2B_SANDBOX_ID $E2B_TEMPLATE_ID").stdout.split()
        assert out == ["true", sbx.sandbox_id, "base"]
    finally:
        sbx.kill()


def test_the_daemon_answers_cors_preflights(daemon):
    r = httpx.options(
        f"{daemon.url}/files",
        headers={
            "Origin": "http://app.example.test",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "e2b-sandbox-id, x-access-token, content-type",
        },
    )
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == "*"
    assert "x-access-token" in r.headers["access-control-allow-headers"]
    assert "POST" in r.headers["access-control-allow-methods"]
    r = httpx.get(f"{daemon.url}/v2/sandboxes", headers={**H, "Origin": "http://app.example.test"})
    assert r.headers["access-control-allow-origin"] == "*"
    # An OPTIONS that is not a preflight is not answered as one.
    r = httpx.options(f"{daemon.url}/v2/sandboxes", headers=H)
    assert r.status_code in (404, 405), r.status_code
