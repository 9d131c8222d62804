"""Network benchmark (prints figures, asserts nothing about speed): as root, with a release build,

    target/sdk-venv/bin/python tests/serve/bench_network.py

(`BENCH_SERVE_ARGS` adds flags to `ember serve`, e.g. `--no-host-ca`.)

Starts the fake internet (fakenet.py) and an `ember serve` of its own (pool of 2, DNS to the fake
internet's resolver), then measures through the REST API:
- create p50/p99 with the warm pool, without a network policy and with one (a CIDR allow, a
  domain allow and a deny of everything, which puts nftables rules and the egress proxy's redirect
  in force before the create returns);
- TCP throughput guest -> fake internet (64 MiB into a sink, through the tap, the slot's NAT and
  the host's);
- how long after `PUT /sandboxes/{id}/network` returns a new connection is refused (the guest
  retries a connection in a loop and records when it first fails), and the PUT's own time.
"""

import os
import statistics
import sys
import time

import httpx

sys.path.insert(0, os.path.dirname(__file__))
from conftest import KEY, Daemon, free_port, pct  # noqa: E402
from fakenet import DNS_IP, FakeInternet  # noqa: E402
from test_network import SINK_SCRIPT, finish_daemon, new_data_dir, sh, sdk_env  # noqa: E402

CREATES = 30
POLICY = {"allowOut": ["198.51.100.9", "allowed.test"], "denyOut": ["0.0.0.0/0"]}


def creates(d, network):
    times = []
    for _ in range(CREATES):
        body = {"templateID": "base", **({"network": network} if network else {})}
        start = time.perf_counter()
        r = httpx.post(f"{d.url}/sandboxes", json=body, headers={"X-API-Key": KEY}, timeout=120)
        times.append((time.perf_counter() - start) * 1000)
        assert r.status_code == 201, r.text
        httpx.delete(f"{d.url}/sandboxes/{r.json()['sandboxID']}", headers={"X-API-Key": KEY}, timeout=60)
        time.sleep(0.5)  # let the pool refill, as the snapshots bench does
    return times


UPDATE_PROBE = r"""
import socket, time
deadline = time.time() + 30
while time.time() < deadline:
    try:
        socket.create_connection(("198.51.100.7", 80), timeout=1).close()
    except OSError:
        print(f"{time.time():.6f}")
        break
    time.sleep(0.002)
"""


def main():
    if os.geteuid() != 0:
        sys.exit("bench_network: run as root")
    with FakeInternet() as inet:
        inet.check_from_host()
        d = Daemon(new_data_dir("ember-net-bench-"), free_port())
        try:
            extra = os.environ.get("BENCH_SERVE_ARGS", "").split()
            d.start("--destroy-on-exit", "--dns", DNS_IP, "--pool", "2", *extra)
            creates(d, None)[:3]  # warm up: template snapshot, pool
            plain = creates(d, None)
            policy = creates(d, POLICY)
            print(f"network bench, {CREATES} creates each, warm pool of 2, 500 ms apart")
            print(f"  create, no policy:   p50 {pct(plain, 50):.0f} ms, p99 {pct(plain, 99):.0f} ms")
            print(f"  create, with policy: p50 {pct(policy, 50):.0f} ms, p99 {pct(policy, 99):.0f} ms")
            with sdk_env(d):
                from e2b import Sandbox

                s = Sandbox.create()
                try:
                    s.files.write("/tmp/sink.py", SINK_SCRIPT)
                    rates = []
                    for _ in range(3):
                        rc, out, err = sh(s, f"python3 /tmp/sink.py {64 << 20}", timeout=300)
                        assert rc == 0, out + err
                        sent, reported, secs = out.split()
                        assert int(reported) == int(sent), out
                        rates.append(int(sent) / float(secs) / 1e6)
                    print(f"  TCP guest -> fake internet, 64 MiB x3: {statistics.median(rates):.0f} MB/s median "
                          f"({', '.join(f'{r:.0f}' for r in rates)})")
                    s.files.write("/tmp/probe.py", UPDATE_PROBE)
                    lags, puts = [], []
                    for _ in range(5):
                        h = s.commands.run("python3 /tmp/probe.py", background=True)
                        time.sleep(1.0)
                        start = time.time()
                        r = httpx.put(f"{d.url}/sandboxes/{s.sandbox_id}/network", json={"denyOut": ["0.0.0.0/0"]},
                                      headers={"X-API-Key": KEY}, timeout=60)
                        done = time.time()
                        assert r.status_code == 204, r.text
                        failed_at = float(h.wait().stdout.strip())
                        puts.append((done - start) * 1000)
                        lags.append((failed_at - done) * 1000)
                        httpx.put(f"{d.url}/sandboxes/{s.sandbox_id}/network", json={},
                                  headers={"X-API-Key": KEY}, timeout=60)
                    print(f"  policy update: PUT p50 {statistics.median(puts):.0f} ms; first refused connection "
                          f"{statistics.median(lags):.0f} ms after the PUT returned (median of 5; guest clock, "
                          f"set from the host's at create)")
                finally:
                    s.kill()
        finally:
            finish_daemon(d)


if __name__ == "__main__":
    main()
