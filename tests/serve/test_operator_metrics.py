"""Operator metrics (Prometheus text on `--metrics-listen`, never on the API's port): sandboxes
by state and team, creates with their latency histogram, pause and resume durations, pool
depth and error answers by kind move as the API is used.

Run: target/sdk-venv/bin/python -m pytest tests/serve/test_operator_metrics.py -q -p no:cacheprovider
"""

import re

import httpx
from e2b import Sandbox

from conftest import KEY


def scrape(daemon):
    r = httpx.get(daemon.metrics_url)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    values = {}
    for line in r.text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def test_metrics_follow_creates_pauses_and_errors(daemon):
    before = scrape(daemon)
    sbx = Sandbox.create()
    try:
        sbx.pause()
        Sandbox.connect(sbx.sandbox_id)
        assert httpx.get(f"{daemon.url}/sandboxes/nosuchsandbox", headers={"X-API-Key": KEY}).status_code == 404
        after = scrape(daemon)
        assert after["ember_sandbox_creates_total"] == before["ember_sandbox_creates_total"] + 1
        assert after["ember_sandbox_create_seconds_count"] == before["ember_sandbox_create_seconds_count"] + 1
        assert after['ember_sandbox_create_seconds_bucket{le="+Inf"}'] == after["ember_sandbox_create_seconds_count"]
        assert after["ember_sandbox_pause_seconds_count"] == before["ember_sandbox_pause_seconds_count"] + 1
        assert after["ember_sandbox_resume_seconds_count"] == before["ember_sandbox_resume_seconds_count"] + 1
        assert after["ember_sandbox_resume_seconds_sum"] > before["ember_sandbox_resume_seconds_sum"]
        assert after['ember_api_errors_total{kind="not_found"}'] >= before['ember_api_errors_total{kind="not_found"}'] + 1
        assert after['ember_sandboxes{state="running"}'] >= 1
        assert after['ember_team_sandboxes{team="default",state="running"}'] >= 1
        # base sandboxes have 1 vCPU each.
        assert after['ember_team_vcpus{team="default",state="running"}'] >= 1
        # Nothing of this on the API's port.
        assert httpx.get(f"{daemon.url}/metrics", headers={"X-API-Key": KEY}).status_code == 404
        assert all(re.fullmatch(r"[a-z_]+(\{.*\})?", name) for name in after)
    finally:
        sbx.kill()
