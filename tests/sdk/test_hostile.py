"""Hostile input with raw requests: malformed and oversized frames, unknown fields, bad paths
and encodings, clients that vanish mid-stream. Each gets a clear error and the agent keeps
serving."""

import base64
import json
import socket
import struct
import threading
import time
import urllib.parse

import httpx

from conftest import make_sandbox


def frame(payload, flags=0):
    if isinstance(payload, dict):
        payload = json.dumps(payload).encode()
    return bytes([flags]) + struct.pack(">I", len(payload)) + payload


def frames(body):
    out = []
    while body:
        flags, n = body[0], struct.unpack(">I", body[1:5])[0]
        out.append((flags, json.loads(body[5 : 5 + n])))
        body = body[5 + n :]
    return out


def rpc(agent, path, body, stream=True):
    ctype = "application/connect+json" if stream else "application/json"
    return httpx.post(
        f"{agent['url']}{path}",
        content=body,
        headers={"Content-Type": ctype, "X-Access-Token": agent["token"]},
        timeout=30,
    )


def still_serving(agent):
    assert make_sandbox(agent).commands.run("echo alive").stdout == "alive\n"


def test_stream_errors_come_in_the_end_frame_with_200(agent):
    r = rpc(agent, "/process.Process/Start", frame(b"{not json"))
    assert r.status_code == 200
    [(flags, end)] = frames(r.content)
    assert flags == 2 and end["error"]["code"] == "invalid_argument"
    still_serving(agent)


def test_oversized_frame_header_is_refused_without_buffering(agent):
    r = rpc(agent, "/process.Process/Start", b"\x00\xff\xff\xff\xff" + b"x" * 100)
    assert r.status_code == 200
    assert frames(r.content)[0][1]["error"]["code"] in ("invalid_argument", "resource_exhausted")
    still_serving(agent)


def test_oversized_unary_body_is_refused(agent):
    r = rpc(agent, "/filesystem.Filesystem/Stat", b'{"path":"' + b"a" * (5 << 20) + b'"}', stream=False)
    assert r.status_code == 429 and r.json()["code"] == "resource_exhausted"
    still_serving(agent)


def test_unknown_fields_are_ignored(agent):
    req = {"process": {"cmd": "/bin/echo", "args": ["x"], "futureField": 1}, "alsoNew": {"a": []}}
    r = rpc(agent, "/process.Process/Start", frame(req))
    events = [f[1] for f in frames(r.content)]
    assert events[0]["event"]["start"]["pid"] > 0
    assert events[-2]["event"]["end"]["exitCode"] == 0
    assert events[-2]["event"]["end"]["status"] == "exit status 0"


def test_unknown_method_and_wrong_types(agent):
    r = rpc(agent, "/process.Process/Nope", b"{}", stream=False)
    assert r.status_code == 501 and r.json()["code"] == "unimplemented"
    r = rpc(agent, "/process.Process/SendSignal", b'{"process":{"pid":"abc"},"signal":9}', stream=False)
    assert r.status_code == 400 and r.json()["code"] == "invalid_argument"
    r = rpc(agent, "/process.Process/SendSignal", b'{"process":{"pid":99999999},"signal":"SIGNAL_SIGKILL"}', stream=False)
    assert r.status_code == 404 and r.json()["code"] == "not_found"


def test_bad_paths_and_encodings(agent):
    h = {"X-Access-Token": agent["token"]}
    r = httpx.get(f"{agent['url']}/files?path=%ff%fe", headers=h)
    assert r.status_code in (400, 404), r.text
    r = httpx.get(f"{agent['url']}/files?path=a%00b", headers=h)
    assert r.status_code == 400 and r.json()["code"] == 400
    r = httpx.get(f"{agent['url']}/files", headers=h)
    assert r.status_code == 400 and "missing path" in r.json()["message"]
    r = httpx.get(f"{agent['url']}/files?path=/x&username=nosuchuser", headers=h)
    assert r.status_code == 401
    still_serving(agent)


def test_multipart_path_tricks_stay_within_permissions(agent):
    h = {"X-Access-Token": agent["token"]}
    r = httpx.post(f"{agent['url']}/files", headers=h, files={"file": ("../../../../etc/ember-evil", b"x")})
    assert r.status_code == 403, r.text
    r = httpx.post(f"{agent['url']}/files", headers=h, files={"file": ("", b"x")})
    assert r.status_code == 400
    r = httpx.post(f"{agent['url']}/files", headers=h, content=b"--nope", params={"path": "x"})
    assert r.status_code == 200  # a raw body is an octet-stream upload to ?path
    still_serving(agent)


def test_client_disconnecting_mid_stream(agent):
    host, port = urllib.parse.urlparse(agent["url"]).netloc.split(":")
    body = frame({"process": {"cmd": "/bin/sh", "args": ["-c", "for i in $(seq 1 50); do echo $i; sleep 0.05; done"]}})
    for _ in range(5):
        s = socket.create_connection((host, int(port)))
        s.sendall(
            b"POST /process.Process/Start HTTP/1.1\r\nHost: x\r\nContent-Type: application/connect+json\r\n"
            + f"X-Access-Token: {agent['token']}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        s.recv(100)
        s.close()
    still_serving(agent)


def test_garbage_http_does_not_stop_the_agent(agent):
    host, port = urllib.parse.urlparse(agent["url"]).netloc.split(":")
    s = socket.create_connection((host, int(port)))
    s.sendall(b"\x00\xffNOT HTTP AT ALL\r\n\r\n" * 10)
    s.close()
    still_serving(agent)


def test_keepalive_frames_fill_silence(agent):
    r = httpx.post(
        f"{agent['url']}/process.Process/Start",
        content=frame({"process": {"cmd": "/bin/sleep", "args": ["2.5"]}}),
        headers={"Content-Type": "application/connect+json", "X-Access-Token": agent["token"], "Keepalive-Ping-Interval": "1"},
        timeout=30,
    )
    events = [f[1] for f in frames(r.content)]
    assert "start" in events[0]["event"]
    assert sum(1 for e in events if "keepalive" in e.get("event", {})) >= 2, events
    assert "end" in events[-2]["event"]


def test_stream_input_client_stream(agent):
    h = {"X-Access-Token": agent["token"]}
    out = {}

    def run_cat():
        r = httpx.post(
            f"{agent['url']}/process.Process/Start",
            content=frame({"process": {"cmd": "/bin/cat"}, "stdin": True, "tag": "cat-tag"}),
            headers={**h, "Content-Type": "application/connect+json"},
            timeout=30,
        )
        out["events"] = [f[1] for f in frames(r.content)]

    t = threading.Thread(target=run_cat)
    t.start()
    time.sleep(1)
    body = frame({"start": {"process": {"tag": "cat-tag"}}}) + frame({"data": {"input": {"stdin": "c3RyZWFtZWQK"}}}) + frame({"keepalive": {}})

    def chunks():
        yield body[:7]
        yield body[7:]

    r = httpx.post(
        f"{agent['url']}/process.Process/StreamInput",
        content=chunks(),
        headers={**h, "Content-Type": "application/connect+json"},
    )
    assert r.status_code == 200
    assert frames(r.content)[-1] == (2, {})
    r = httpx.post(f"{agent['url']}/process.Process/CloseStdin", json={"process": {"tag": "cat-tag"}}, headers=h)
    assert r.status_code == 200, r.text
    t.join(30)
    stdout = b"".join(base64.b64decode(e["event"]["data"]["stdout"]) for e in out["events"] if "data" in e.get("event", {}))
    assert stdout == b"streamed\n"
