"""Directory watches: the sync SDK's polled watchers and the async SDK's WatchDir stream."""

import asyncio
import time

import pytest
from e2b import AsyncSandbox, FilesystemEventType, NotFoundException

from conftest import ENVD_VERSION


def _poll(handle, want, timeout=15):
    events = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        events += handle.get_new_events()
        if want(events):
            return events
        time.sleep(0.2)
    raise AssertionError(f"events never matched: {events}")


def test_polled_watcher_sees_create_write_remove(sbx, workdir):
    w = sbx.files.watch_dir(workdir)
    sbx.files.write(f"{workdir}/w.txt", "1")
    sbx.commands.run(f"echo more >> {workdir}/w.txt")
    sbx.files.remove(f"{workdir}/w.txt")
    events = _poll(w, lambda ev: any(e.type == FilesystemEventType.REMOVE for e in ev))
    kinds = {(e.name, e.type) for e in events}
    assert ("w.txt", FilesystemEventType.CREATE) in kinds
    assert ("w.txt", FilesystemEventType.WRITE) in kinds
    w.stop()


def test_recursive_watch_reports_nested_paths(sbx, workdir):
    sbx.files.make_dir(f"{workdir}/sub")
    w = sbx.files.watch_dir(workdir, recursive=True)
    sbx.files.write(f"{workdir}/sub/n.txt", "n")
    events = _poll(w, lambda ev: any(e.name == "sub/n.txt" for e in ev))
    assert any(e.name == "sub/n.txt" and e.type == FilesystemEventType.CREATE for e in events)
    w.stop()


def test_watching_a_missing_dir_is_not_found(sbx, workdir):
    with pytest.raises(NotFoundException):
        sbx.files.watch_dir(f"{workdir}/nope")


def test_async_watch_stream(agent, workdir):
    async def run():
        from e2b.connection_config import ConnectionConfig
        from packaging.version import Version

        headers = {"E2b-Sandbox-Id": "test", "E2b-Sandbox-Port": "49983", "X-Access-Token": agent["token"]}
        config = ConnectionConfig(sandbox_url=agent["url"], api_key="e2b_" + "0" * 40, extra_sandbox_headers=headers)
        sbx = AsyncSandbox(
            sandbox_id="test",
            sandbox_domain=None,
            envd_version=Version(ENVD_VERSION),
            envd_access_token=agent["token"],
            traffic_access_token=None,
            connection_config=config,
        )
        seen = []
        got = asyncio.Event()

        def on_event(e):
            seen.append(e)
            if e.name == "async.txt":
                got.set()

        handle = await sbx.files.watch_dir(workdir, on_event=on_event)
        await sbx.files.write(f"{workdir}/async.txt", "a")
        await asyncio.wait_for(got.wait(), 15)
        await handle.stop()
        return seen

    seen = asyncio.run(run())
    assert any(e.name == "async.txt" and e.type == FilesystemEventType.CREATE for e in seen)
