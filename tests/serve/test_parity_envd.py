"""E2B behaviour parity of the guest agent (envd) with the official Python SDK: removing a missing
path, resolved symlink targets, the metadata a write returns, the events a watch sees for a new
file, gzip downloads, CORS answers for browsers, and the files naming the sandbox in /run/e2b."""

import gzip
import os
import time

import httpx
from e2b import FilesystemEventType

from conftest import KEY  # noqa: F401  (the daemon fixture sets the SDK's environment)


def envd(daemon, sbx, **headers):
    """Headers for a raw call to the sandbox's envd through the daemon."""
    return {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "49983", **headers}


def test_removing_a_missing_path_succeeds(sbx):
    sbx.files.remove("/home/user/never-there")
    sbx.files.remove("/home/user/no/such/dir/file.txt")
    sbx.files.write("/home/user/gone.txt", "x")
    sbx.files.remove("/home/user/gone.txt")
    sbx.files.remove("/home/user/gone.txt")
    assert not sbx.files.exists("/home/user/gone.txt")


def test_symlink_target_is_absolute_and_resolved(sbx):
    sbx.commands.run("cd /home/user && echo hi > a && ln -s a b && ln -s b c && mkdir -p d && ln -s ../a d/up"
                     " && ln -s missing dangling")
    info = sbx.files.get_info("/home/user/b")
    assert info.symlink_target == "/home/user/a"
    assert sbx.files.get_info("/home/user/c").symlink_target == "/home/user/a"
    assert sbx.files.get_info("/home/user/d/up").symlink_target == "/home/user/a"
    assert sbx.files.get_info("/home/user/dangling").symlink_target == "/home/user/missing"
    assert sbx.files.get_info("/home/user/a").symlink_target is None
    listed = {e.name: e.symlink_target for e in sbx.files.list("/home/user") if e.name in ("b", "c")}
    assert listed == {"b": "/home/user/a", "c": "/home/user/a"}


def test_writes_return_what_they_stored(sbx):
    info = sbx.files.write("/home/user/meta/one.txt", "1", metadata={"Owner": "alice", "kind": "note"})
    assert (info.name, info.path, info.type.value) == ("one.txt", "/home/user/meta/one.txt", "file")
    assert info.metadata == {"owner": "alice", "kind": "note"}
    assert sbx.files.get_info("/home/user/meta/one.txt").metadata == {"owner": "alice", "kind": "note"}
    plain = sbx.files.write("/home/user/meta/two.txt", "2")
    assert plain.metadata is None
    many = sbx.files.write_files([{"path": "/home/user/meta/a", "data": "a"}, {"path": "meta/b", "data": b"b"}],
                                 metadata={"batch": "7"})
    assert [(i.path, i.metadata) for i in many] == [
        ("/home/user/meta/a", {"batch": "7"}), ("/home/user/meta/b", {"batch": "7"})]
    assert sbx.files.write_files([]) == []


def test_watch_sees_create_write_chmod_for_a_new_file(sbx):
    sbx.files.make_dir("/home/user/watched")
    w = sbx.files.watch_dir("/home/user/watched")
    try:
        sbx.files.write("/home/user/watched/new.txt", "hello")
        deadline, kinds = time.time() + 30, []
        while time.time() < deadline and FilesystemEventType.CHMOD not in kinds:
            kinds += [e.type for e in w.get_new_events() if e.name == "new.txt"]
            time.sleep(0.2)
        time.sleep(1)
        kinds += [e.type for e in w.get_new_events() if e.name == "new.txt"]
    finally:
        w.stop()
    seq = [k for i, k in enumerate(kinds) if i == 0 or kinds[i - 1] != k]
    assert seq == [FilesystemEventType.CREATE, FilesystemEventType.WRITE, FilesystemEventType.CHMOD], kinds
    # Still written as the requesting user.
    assert sbx.commands.run("stat -c %U /home/user/watched/new.txt").stdout.strip() == "user"


def test_gzip_downloads(daemon, sbx):
    text = "compress me " * 5000
    sbx.files.write("/home/user/z.txt", text)
    assert sbx.files.read("/home/user/z.txt", gzip=True) == text
    params = {"path": "/home/user/z.txt"}
    token = sbx._envd_access_token
    with httpx.Client() as c:
        with c.stream("GET", f"{daemon.url}/files", params=params,
                      headers=envd(daemon, sbx, **{"X-Access-Token": token, "Accept-Encoding": "gzip"})) as r:
            assert r.status_code == 200
            assert r.headers["content-encoding"] == "gzip"
            raw = b"".join(r.iter_raw())
        assert raw[:2] == b"\x1f\x8b" and len(raw) < len(text) // 10
        assert gzip.decompress(raw).decode() == text
        plain = c.get(f"{daemon.url}/files", params=params,
                      headers=envd(daemon, sbx, **{"X-Access-Token": token, "Accept-Encoding": "identity"}))
        assert "content-encoding" not in plain.headers and plain.headers["content-length"] == str(len(text))
        assert plain.text == text
        # A range is sent as it is on disk.
        part = c.get(f"{daemon.url}/files", params=params, headers=envd(
            daemon, sbx, **{"X-Access-Token": token, "Accept-Encoding": "gzip", "Range": "bytes=0-7"}))
        assert part.status_code == 206 and "content-encoding" not in part.headers and part.text == "compress"
        # Data that does not compress (random, archives) goes as it is, which the client accepts.
        sbx.files.write("/home/user/random.bin", os.urandom(200_000))
        binary = c.get(f"{daemon.url}/files", params={"path": "/home/user/random.bin"},
                       headers=envd(daemon, sbx, **{"X-Access-Token": token, "Accept-Encoding": "gzip"}))
        assert "content-encoding" not in binary.headers and binary.headers["content-length"] == "200000"
        refused = c.get(f"{daemon.url}/files", params=params,
                        headers=envd(daemon, sbx, **{"X-Access-Token": token, "Accept-Encoding": "br, identity;q=0"}))
        assert refused.status_code == 406


def test_cors_preflight_and_headers(daemon, sbx):
    requested = "authorization, connect-protocol-version, content-type, x-access-token, e2b-sandbox-id, e2b-sandbox-port"
    pre = httpx.options(f"{daemon.url}/process.Process/Start", headers=envd(daemon, sbx, **{
        "Origin": "http://example.test", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": requested}))
    assert pre.status_code in (200, 204), pre.text
    assert pre.headers["access-control-allow-origin"] == "*"
    assert "POST" in pre.headers["access-control-allow-methods"]
    allowed = pre.headers["access-control-allow-headers"].lower()
    assert allowed == "*" or all(h in allowed for h in requested.split(", ")), allowed
    assert int(pre.headers["access-control-max-age"]) > 0
    # Without a token: a refusal the browser may read.
    refused = httpx.post(f"{daemon.url}/filesystem.Filesystem/Stat", json={"path": "/"},
                         headers=envd(daemon, sbx, Origin="http://example.test"))
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == "*"
    ok = httpx.get(f"{daemon.url}/health", headers=envd(daemon, sbx, Origin="http://example.test"))
    assert ok.headers["access-control-allow-origin"] == "*"
    assert "grpc-status" in ok.headers["access-control-expose-headers"].lower()


def test_run_files_name_the_sandbox(sbx):
    env = sbx.commands.run("echo ${E2B_SANDBOX_ID:-}").stdout.strip()
    assert env == sbx.sandbox_id
    assert sbx.files.read("/run/e2b/.E2B_SANDBOX_ID") == sbx.sandbox_id
    template = sbx.commands.run("echo ${E2B_TEMPLATE_ID:-}").stdout.strip()
    assert sbx.files.read("/run/e2b/.E2B_TEMPLATE_ID") == template
    out = sbx.commands.run("stat -c '%U %a' /run/e2b/.E2B_SANDBOX_ID /run/e2b/.E2B_TEMPLATE_ID").stdout
    assert out == "root 444\nroot 444\n"
    r = sbx.commands.run("echo x > /run/e2b/.E2B_SANDBOX_ID 2>&1 || echo refused")
    assert "refused" in r.stdout
