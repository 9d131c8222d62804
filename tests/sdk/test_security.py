"""The access token and signed file URLs, including the exact error bodies the SDK tests for."""

import httpx
import pytest
from e2b import AuthenticationException

from conftest import make_sandbox


def test_rpcs_and_envs_need_the_token(agent):
    wrong = make_sandbox(agent, token="wrong-token")
    with pytest.raises(AuthenticationException):
        wrong.commands.run("true")
    assert httpx.get(f"{agent['url']}/envs").status_code == 401
    r = httpx.get(f"{agent['url']}/envs", headers={"X-Access-Token": agent["token"]})
    assert r.status_code == 200 and r.json()["EMBER_SANDBOX_ENV"] == "from-init"
    assert httpx.get(f"{agent['url']}/health").status_code == 204


def test_init_needs_the_current_token(agent):
    r = httpx.post(f"{agent['url']}/init", json={"accessToken": "stolen"})
    assert r.status_code == 401
    r = httpx.post(f"{agent['url']}/init", json={}, headers={"X-Access-Token": agent["token"]})
    assert r.status_code == 204


def test_signed_download_and_upload_urls(sbx, workdir):
    sbx.files.write(f"{workdir}/s.txt", "signed")
    url = sbx.download_url(f"{workdir}/s.txt")
    assert "signature=v1_" in url
    r = httpx.get(url)
    assert r.status_code == 200 and r.text == "signed"
    up = sbx.upload_url(f"{workdir}/up.txt")
    r = httpx.post(up, files={"file": ("up.txt", b"uploaded")})
    assert r.status_code == 200, r.text
    assert sbx.files.read(f"{workdir}/up.txt") == "uploaded"


def test_bad_signatures_are_refused_with_envds_messages(sbx, workdir):
    sbx.files.write(f"{workdir}/s.txt", "signed")
    url = sbx.download_url(f"{workdir}/s.txt")
    assert httpx.get(url.replace("signature=v1_", "signature=v1_x")).json() == {"code": 401, "message": "invalid signature"}
    bare = url.split("&signature=")[0]
    assert httpx.get(bare).json() == {"code": 401, "message": "missing signature query parameter"}
    expired = sbx.download_url(f"{workdir}/s.txt", use_signature_expiration=-60)
    r = httpx.get(expired)
    assert r.status_code == 401
    assert r.json() == {"code": 401, "message": "signature is already expired"}
    # A signature for reading does not allow writing.
    r = httpx.post(url, files={"file": ("s.txt", b"overwrite")})
    assert r.status_code == 401
    assert sbx.files.read(f"{workdir}/s.txt") == "signed"


def test_metrics_are_real(agent):
    m = httpx.get(f"{agent['url']}/metrics", headers={"X-Access-Token": agent["token"]}).json()
    assert m["cpu_count"] >= 1
    assert 0 <= m["cpu_used_pct"] <= 100
    assert 0 < m["mem_used"] < m["mem_total"]
    assert 0 < m["disk_used"] < m["disk_total"]
