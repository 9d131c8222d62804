"""Sandbox networking against a real `ember serve` and a fake internet (fakenet.py).

Every packet these tests send goes to servers they start in namespaces they make (198.51.100.0/24
and three stand-ins for always-denied ranges), to the host itself, or to other sandboxes; the
daemon of this module forwards its sandboxes' DNS to the fake internet's resolver only
(`--dns 198.51.100.53`). The one exception is `test_pip_and_npm_install_through_the_host_ca`,
which talks to the real package registries and runs only with EMBER_TEST_REGISTRIES=1.

What is checked: a default sandbox reaches the internet by address, by name and over TLS, with
Ember's DNS in between; `allow_internet_access=False` lets nothing out (TCP, UDP, ICMP, DNS);
CIDR rules (allow beats deny), domain rules by HTTP Host and TLS SNI (wildcards too), live
updates, 400s for bad rules; what no sandbox may ever reach (private, CGNAT, link-local, the host's
addresses, its own gateway, other sandboxes, internal addresses behind allowed names); ingress
through the daemon's port (`{port}-{id}.{domain}`, loopback-only servers, the traffic access
token, WebSocket, envd's internal paths); and that a crash or a clean stop leaves no namespace,
link or host table behind.

Run as root: target/sdk-venv/bin/python -m pytest tests/serve/test_network.py -q -p no:cacheprovider
"""

import base64
import contextlib
import hashlib
import http.server
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import httpx
import pytest

from conftest import EMBER, KEY, Daemon, free_port, qemu_processes
from fakenet import DNS_IP, HOST_IP, STAND_INS, FakeInternet, host_curl

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, routes, guests)")

ENV = ("E2B_API_URL", "E2B_SANDBOX_URL", "E2B_API_KEY")
SEVEN, EIGHT, NINE = "198.51.100.7", "198.51.100.8", "198.51.100.9"
GATEWAY = "169.254.0.22"  # the tap's address in each sandbox's namespace
ENVD = 49983
MARK = "fake-internet"
DENY_ALL = ["0.0.0.0/0"]


# --- fixtures -------------------------------------------------------------------------------


@contextlib.contextmanager
def sdk_env(d):
    """Points the SDK at daemon `d` (sandboxes keep the daemon they were made with)."""
    saved = {k: os.environ.get(k) for k in ENV}
    os.environ.update(E2B_API_URL=d.url, E2B_SANDBOX_URL=d.url, E2B_API_KEY=KEY)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def new_data_dir(prefix):
    data_dir = tempfile.mkdtemp(prefix=prefix)
    os.chmod(data_dir, 0o755)  # the unprivileged QEMU user must reach the sandboxes' disks
    return data_dir


def finish_daemon(d):
    """Stops `d` (if it still runs), kills QEMUs it left and removes its data directory; returns
    what was left (QEMU processes, sandbox directories)."""
    if d.proc and d.proc.poll() is None:
        d.stop()
    left = qemu_processes(d.data_dir)
    for pid, _ in left:
        os.kill(pid, signal.SIGKILL)
    sandboxes = os.path.join(d.data_dir, "sandboxes")
    left_dirs = os.listdir(sandboxes) if os.path.isdir(sandboxes) else []
    shutil.rmtree(d.data_dir, ignore_errors=True)
    return left, left_dirs


@pytest.fixture(scope="module")
def inet():
    fi = FakeInternet()
    why = fi.unusable()
    if why:
        pytest.skip(f"no fake internet: {why}")
    fi.start()
    yield fi
    fi.stop()
    assert not fi.leftovers(), f"fake internet left: {fi.leftovers()}"


@pytest.fixture(scope="module")
def net_daemon(inet):
    if not os.path.exists(EMBER):
        pytest.skip(f"no ember binary at {EMBER} (cargo build --release)")
    d = Daemon(new_data_dir("ember-net-test-"), free_port())
    with sdk_env(d):
        try:
            d.start("--destroy-on-exit", "--dns", DNS_IP, "--pool", "1")
        except BaseException:
            finish_daemon(d)
            raise
        yield d
    left, left_dirs = finish_daemon(d)
    assert not left, f"QEMU processes left after the daemon stopped: {left}"
    assert not left_dirs, f"sandbox directories left: {left_dirs}"


@contextlib.contextmanager
def sandbox(**kw):
    from e2b import Sandbox

    started = time.time()
    s = Sandbox.create(timeout=900, **kw)
    print(f"sandbox {s.sandbox_id} {kw or ''} created in {time.time() - started:.2f}s")
    try:
        yield s
    finally:
        try:
            s.kill()
        except Exception:
            pass


@pytest.fixture(scope="module")
def open_sbx(net_daemon):
    """A default sandbox shared by the tests that only read from it."""
    with sandbox() as s:
        yield s


# --- helpers --------------------------------------------------------------------------------


def sh(sbx, cmd, timeout=60, user=None):
    """Runs `cmd` in the guest: (exit code, stdout, stderr), whatever the exit code."""
    from e2b import CommandExitException

    try:
        r = sbx.commands.run(cmd, timeout=timeout, user=user)
    except CommandExitException as e:
        return e.exit_code, e.stdout, e.stderr
    return r.exit_code, r.stdout, r.stderr


def curl(sbx, *args, m=5):
    """curl in the guest: (exit code, stdout + stderr)."""
    rc, out, err = sh(sbx, "curl -sS -m %d %s" % (m, " ".join(shlex.quote(a) for a in args)), timeout=m + 60)
    return rc, out + err


def reached(out):
    return MARK in out


def probe(sbx, urls, m=3):
    """curls every URL from the guest at once: {url: (exit code, first 300 bytes of output)}."""
    words = " ".join(shlex.quote(u) for u in urls)
    script = (
        f"for u in {words}; do ( o=$(curl -sS -m {m} \"$u\" 2>&1); rc=$?;"
        " printf '%s|%s|%s\\n' \"$u\" \"$rc\" \"$(printf %s \"$o\" | head -c 300 | tr '\\n\\r|' '   ')\" ) & done; wait"
    )
    _, out, _ = sh(sbx, script, timeout=m + 90)
    results = {}
    for line in out.splitlines():
        url, rc, text = line.split("|", 2)
        results[url] = (int(rc), text)
    assert set(results) == set(urls), f"missing probes: {set(urls) - set(results)}\n{out}"
    return results


def assert_nothing_answers(results, marks=(MARK,)):
    answered = {u: r for u, r in results.items() if r[0] == 0 or any(m in r[1] for m in marks)}
    assert not answered, "reachable from the guest:\n" + "\n".join(f"  {u}: {r}" for u, r in answered.items())


def getent(sbx, name):
    rc, out, err = sh(sbx, f"getent hosts {shlex.quote(name)}")
    return rc, out + err


UDP_SCRIPT = (
    "python3 -c \"import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(2);"
    "s.sendto(b'udp-ember',('198.51.100.7',9999));print(s.recvfrom(100)[0].decode())\""
)

# ICMP echo through a raw socket (the guest has no ping); run as root. Prints echo-reply or no-reply.
ICMP_SCRIPT = r"""
import os, socket, struct, sys, time
dst = sys.argv[1]
def csum(b):
    b += b"\0" * (len(b) % 2)
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF
ident = os.getpid() & 0xFFFF
pkt = struct.pack("!BBHHH", 8, 0, 0, ident, 1) + b"ember-icmp"
pkt = pkt[:2] + struct.pack("!H", csum(pkt)) + pkt[4:]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.sendto(pkt, (dst, 0))
deadline = time.time() + 2
while time.time() < deadline:
    s.settimeout(max(0.01, deadline - time.time()))
    try:
        data, addr = s.recvfrom(2048)
    except socket.timeout:
        break
    ihl = (data[0] & 15) * 4
    kind, _, _, rid, _ = struct.unpack("!BBHHH", data[ihl:ihl + 8])
    if addr[0] == dst and kind == 0 and rid == ident:
        print("echo-reply")
        sys.exit(0)
print("no-reply")
sys.exit(1)
"""

# Sends N bytes to the fake internet's sink and prints "sent reported seconds".
SINK_SCRIPT = r"""
import socket, sys, time
n = int(sys.argv[1])
buf = b"x" * 65536
s = socket.create_connection(("198.51.100.7", 9000), timeout=30)
start = time.time()
sent = 0
while sent < n:
    s.sendall(buf)
    sent += len(buf)
s.shutdown(socket.SHUT_WR)
reported = s.makefile().readline().strip()
print(sent, reported, time.time() - start)
"""


def icmp_echo(sbx, dst):
    sbx.files.write("/tmp/icmp.py", ICMP_SCRIPT)
    rc, out, err = sh(sbx, f"python3 /tmp/icmp.py {dst}", user="root", timeout=60)
    return rc == 0 and "echo-reply" in out, out + err


def api(d, method, path, **kw):
    return httpx.request(method, f"{d.url}{path}", headers={"X-API-Key": KEY}, timeout=120, **kw)


def wait_for(cond, timeout, what, every=0.3):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def expose(d, sbx, port, path="/", headers=None, timeout=30):
    """GET `path` of `port` of the sandbox through the daemon (Host `{port}-{id}.{domain}`),
    retrying until the guest's server answers 200 or `timeout` passes; the last response."""
    host = sbx.get_host(port)
    deadline = time.time() + timeout
    while True:
        try:
            r = httpx.get(f"{d.url}{path}", headers={"Host": host, **(headers or {})}, timeout=10)
            if r.status_code == 200 or time.time() > deadline:
                return r
        except httpx.HTTPError:
            if time.time() > deadline:
                raise
        time.sleep(0.5)


def network_of(d, sid):
    r = api(d, "GET", f"/sandboxes/{sid}")
    assert r.status_code == 200, r.text
    return r.json().get("network") or {}


def host_addresses():
    """The host's IPv4 addresses (`ip -4 -br addr`), loopback excepted."""
    out = subprocess.run(["ip", "-4", "-br", "addr"], capture_output=True, text=True, check=True).stdout
    addrs = []
    for line in out.splitlines():
        for word in line.split()[2:]:
            addr = word.split("/")[0]
            if re.fullmatch(r"\d+\.\d+\.\d+\.\d+", addr) and not addr.startswith("127."):
                addrs.append(addr)
    return addrs


def uplink_addr(sid):
    """The namespace side of sandbox `sid`'s uplink (198.18.x.2)."""
    out = subprocess.run(["ip", "-n", f"ember-{sid}", "-4", "-br", "addr", "show", "up0"],
                         capture_output=True, text=True, check=True).stdout
    m = re.search(r"(\d+\.\d+\.\d+\.\d+)/\d+", out)
    assert m, out
    return m.group(1)


def slot_gateway(sid):
    """The host side of sandbox `sid`'s uplink: its namespace's default gateway (198.18.x.1)."""
    out = subprocess.run(["ip", "-n", f"ember-{sid}", "route"], capture_output=True, text=True, check=True).stdout
    m = re.search(r"default via (\S+)", out)
    assert m, out
    return m.group(1)


def host_link_of(ns):
    """(name, ifindex) of the host side of namespace `ns`'s uplink, or None."""
    r = subprocess.run(["ip", "-n", ns, "-o", "link", "show", "up0"], capture_output=True, text=True)
    m = re.search(r"up0@if(\d+)", r.stdout)
    if not m:
        return None
    peer = int(m.group(1))
    for name in os.listdir("/sys/class/net"):
        try:
            with open(f"/sys/class/net/{name}/ifindex") as f:
                if int(f.read()) == peer:
                    return name, peer
        except OSError:
            continue
    return None


def link_exists(link):
    name, ifindex = link
    try:
        with open(f"/sys/class/net/{name}/ifindex") as f:
            return int(f.read()) == ifindex
    except OSError:
        return False


def daemon_network_state(d):
    """The namespaces (its sandboxes' and pre-made slots') and host links daemon `d` holds."""
    ids = set()
    for sub in ("sandboxes", "slots"):
        path = os.path.join(d.data_dir, sub)
        if os.path.isdir(path):
            ids |= set(os.listdir(path))
    namespaces = {f"ember-{i}" for i in ids if os.path.exists(f"/run/netns/ember-{i}")}
    links = {ln for ln in (host_link_of(ns) for ns in namespaces) if ln}
    return namespaces, links


def emh_links():
    return sorted(n for n in os.listdir("/sys/class/net") if n.startswith("emh"))


@contextlib.contextmanager
def host_server():
    """An HTTP server on the host bound to 0.0.0.0 (a free port) answering `host-server`."""

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"host-server\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("0.0.0.0", 0), H)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield srv.server_address[1]
    finally:
        srv.shutdown()
        srv.server_close()


def create_must_fail(**kw):
    """Sandbox.create(**kw) must raise a 400; returns its message."""
    from e2b import Sandbox, SandboxException

    try:
        s = Sandbox.create(**kw)
    except SandboxException as e:
        assert getattr(e, "status_code", None) == 400 or str(e).startswith("400"), repr(e)
        return str(e)
    s.kill()
    raise AssertionError(f"Sandbox.create({kw}) was accepted")


# --- tests ----------------------------------------------------------------------------------


def test_fake_internet_is_reachable_from_the_host(inet):
    inet.check_from_host()


def test_a_default_sandbox_reaches_the_internet_by_address_name_and_tls(inet, open_sbx):
    s = open_sbx
    rc, out = curl(s, f"http://{SEVEN}/")
    assert rc == 0 and f"{MARK} addr={SEVEN} host={SEVEN}" in out, out
    rc, out = curl(s, "--resolve", f"allowed.test:80:{SEVEN}", "http://allowed.test/")
    assert rc == 0 and f"addr={SEVEN} host=allowed.test" in out, out
    # Names through Ember's DNS, whose upstream is the fake internet's resolver.
    mark = inet.mark()
    rc, out = getent(s, "allowed.test")
    assert rc == 0 and SEVEN in out, out
    assert "allowed.test" in inet.asked_since(mark), inet.queries()[mark:]
    rc, out = getent(s, "nothing-here.test")
    assert rc != 0 and SEVEN not in out, out
    rc, out = curl(s, "-k", "--resolve", f"allowed.test:443:{SEVEN}", "https://allowed.test/")
    assert rc == 0 and f"addr={SEVEN} host=allowed.test sni=allowed.test" in out, out
    # UDP and ICMP get out too (the controls for the sandbox without internet access).
    rc, out, err = sh(s, UDP_SCRIPT)
    assert rc == 0 and "udp-ember" in out, out + err
    ok, out = icmp_echo(s, SEVEN)
    assert ok, out
    # Throughput to the sink (printed, not asserted).
    size = 16 << 20
    s.files.write("/tmp/sink.py", SINK_SCRIPT)
    rc, out, err = sh(s, f"python3 /tmp/sink.py {size}", timeout=300)
    assert rc == 0, out + err
    sent, reported, secs = out.split()
    assert int(sent) == int(reported) >= size, out
    print(f"guest -> fake internet TCP: {int(sent) / float(secs) / 1e6:.1f} MB/s ({sent} bytes in {float(secs):.2f}s)")


def test_no_internet_access_lets_nothing_out(inet, net_daemon):
    with sandbox(allow_internet_access=False) as s:
        info = api(net_daemon, "GET", f"/sandboxes/{s.sandbox_id}").json()
        print("reported:", info.get("allowInternetAccess"), info.get("network"))
        rc, out = curl(s, f"http://{SEVEN}/", m=3)
        assert rc != 0 and not reached(out), out
        rc, out, err = sh(s, UDP_SCRIPT)
        assert rc != 0 and "udp-ember" not in out, out + err
        ok, out = icmp_echo(s, SEVEN)
        assert not ok, out
        mark = inet.mark()
        rc, out = getent(s, "allowed.test")
        assert rc != 0 and SEVEN not in out, out
        assert "allowed.test" not in inet.asked_since(mark), "a lookup left a sandbox without internet access"


def test_cidr_rules_and_allow_beats_deny(inet, net_daemon):
    with sandbox(network={"deny_out": ["198.51.100.8/32"]}) as s:
        got = probe(s, [f"http://{SEVEN}/", f"http://{EIGHT}/", f"http://{NINE}/"])
        assert got[f"http://{SEVEN}/"][0] == 0 and reached(got[f"http://{SEVEN}/"][1]), got
        assert got[f"http://{NINE}/"][0] == 0 and reached(got[f"http://{NINE}/"][1]), got
        assert_nothing_answers({u: r for u, r in got.items() if EIGHT in u})
    with sandbox(network={"allow_out": [NINE], "deny_out": DENY_ALL}) as s:
        got = probe(s, [f"http://{SEVEN}/", f"http://{EIGHT}/", f"http://{NINE}/"])
        assert got[f"http://{NINE}/"][0] == 0 and f"addr={NINE}" in got[f"http://{NINE}/"][1], got
        assert_nothing_answers({u: r for u, r in got.items() if NINE not in u})


def test_domain_rules_match_host_and_sni(inet, net_daemon):
    with sandbox(network={"allow_out": ["allowed.test"], "deny_out": DENY_ALL}) as s:
        before = len(inet.requests())
        rc, out = curl(s, "--resolve", f"allowed.test:80:{SEVEN}", "http://allowed.test/")
        assert rc == 0 and f"addr={SEVEN} host=allowed.test" in out, out
        rc, out = curl(s, "--resolve", f"denied.test:80:{EIGHT}", "http://denied.test/")
        assert not reached(out), out
        print("denied.test over HTTP:", rc, out.strip()[:200])
        rc, out = curl(s, "-k", "--resolve", f"allowed.test:443:{SEVEN}", "https://allowed.test/")
        assert rc == 0 and f"addr={SEVEN} host=allowed.test sni=allowed.test" in out, out
        rc, out = curl(s, "-k", "--resolve", f"denied.test:443:{EIGHT}", "https://denied.test/")
        assert rc != 0 and not reached(out), out
        rc, out = curl(s, f"http://{SEVEN}/")
        assert not reached(out), f"a plain address got past a domain-only policy: {out}"
        hosts = [r["host"] for r in inet.requests()[before:]]
        assert "denied.test" not in hosts and SEVEN not in hosts, hosts
        # Lookups: allowed names are forwarded, others refused before they leave.
        mark = inet.mark()
        rc, out = getent(s, "allowed.test")
        assert rc == 0 and SEVEN in out, out
        rc, out = getent(s, "denied.test")
        assert rc != 0 and EIGHT not in out, out
        asked = inet.asked_since(mark)
        assert "allowed.test" in asked and "denied.test" not in asked, asked
    with sandbox(network={"allow_out": ["*.allowed.test"], "deny_out": DENY_ALL}) as s:
        rc, out = curl(s, "--resolve", f"www.allowed.test:80:{SEVEN}", "http://www.allowed.test/")
        assert rc == 0 and "host=www.allowed.test" in out, out
        rc, out = curl(s, "-k", "--resolve", f"www.allowed.test:443:{SEVEN}", "https://www.allowed.test/")
        assert rc == 0 and "sni=www.allowed.test" in out, out
        rc, out = curl(s, "--resolve", f"allowed.test:80:{SEVEN}", "http://allowed.test/")
        assert not reached(out), f"*.allowed.test let allowed.test itself through: {out}"


def test_update_network_holds_for_new_connections_at_once(inet, net_daemon):
    with sandbox() as s:
        rc, out = curl(s, f"http://{SEVEN}/")
        assert rc == 0 and reached(out), out
        s.update_network({"deny_out": DENY_ALL})
        updated = time.time()
        attempts = []
        while True:
            rc, out = curl(s, f"http://{SEVEN}/", m=3)
            attempts.append((time.time() - updated, rc, reached(out)))
            if not reached(out) or time.time() - updated > 20:
                break
        print(f"after update_network(deny all): first failing connection {attempts[-1][0]:.2f}s after the call "
              f"returned, {len(attempts)} attempt(s): {attempts}")
        assert not attempts[0][2], f"the first connection after the update got through: {attempts}"
        assert network_of(net_daemon, s.sandbox_id).get("denyOut") == DENY_ALL
        info = s.get_info()
        print("get_info().network:", info.network)
        assert info.network and info.network.get("deny_out") == DENY_ALL
        s.update_network({})
        rc, out = curl(s, f"http://{SEVEN}/")
        assert rc == 0 and reached(out), f"clearing the rules did not let the sandbox out again: {out}"
        assert not network_of(net_daemon, s.sandbox_id).get("denyOut")


def test_bad_rules_are_400s_and_a_bad_update_keeps_the_rules(inet, net_daemon):
    msg = create_must_fail(network={"allow_out": ["1.2.3.4/33"]})
    assert "1.2.3.4/33" in msg, msg
    msg = create_must_fail(network={"allow_out": [""]})
    assert "empty" in msg, msg
    msg = create_must_fail(network={"deny_out": ["example.com"]})
    assert "example.com" in msg and "denyOut" in msg, msg
    many = [f"203.0.{i // 256}.{i % 256}" for i in range(1001)]
    msg = create_must_fail(network={"deny_out": many})
    assert "1000" in msg, msg
    # The same through the API directly: a 400 with a message.
    r = api(net_daemon, "POST", "/sandboxes", json={"templateID": "base", "network": {"allowOut": ["1.2.3.4/33"]}})
    assert r.status_code == 400 and "1.2.3.4/33" in r.json()["message"], r.text
    from e2b import SandboxException

    with sandbox(network={"deny_out": ["198.51.100.8/32"]}) as s:
        urls = [f"http://{SEVEN}/", f"http://{EIGHT}/"]
        got = probe(s, urls)
        assert reached(got[urls[0]][1]) and not reached(got[urls[1]][1]), got
        with pytest.raises(SandboxException) as e:
            s.update_network({"deny_out": ["1.2.3.4/33"]})
        assert "400" in str(e.value) and "1.2.3.4/33" in str(e.value), str(e.value)
        got = probe(s, urls)
        assert reached(got[urls[0]][1]), f"a refused update changed the rules: {got}"
        assert_nothing_answers({urls[1]: got[urls[1]]})
        assert network_of(net_daemon, s.sandbox_id).get("denyOut") == ["198.51.100.8/32"]


def test_always_denied_destinations_answer_nothing(inet, net_daemon, open_sbx):
    a = open_sbx
    with host_server() as port, sandbox() as b:
        # Sandbox B serves HTTP on its port 8000; the daemon reaches it, so it is live.
        b.commands.run("python3 -m http.server 8000 --bind 0.0.0.0 --directory /tmp", background=True)
        assert expose(net_daemon, b, 8000).status_code == 200
        b_addr = uplink_addr(b.sandbox_id)
        a_uplink = uplink_addr(a.sandbox_id)
        a_link_host = slot_gateway(a.sandbox_id)
        hosts = host_addresses()
        assert HOST_IP in hosts and a_link_host in hosts, hosts
        # A server in A's own namespace, on its gateway and uplink addresses: live from inside.
        ns_port = free_port()
        ns_dir = tempfile.mkdtemp(prefix="ember-net-nsdir-")
        ns_srv = subprocess.Popen(
            ["ip", "netns", "exec", f"ember-{a.sandbox_id}", sys.executable, "-m", "http.server", str(ns_port),
             "--bind", "0.0.0.0", "--directory", ns_dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            def ns_live():
                r = subprocess.run(["ip", "netns", "exec", f"ember-{a.sandbox_id}", "curl", "-sS", "-m", "2",
                                    "-o", "/dev/null", "-w", "%{http_code}", f"http://{GATEWAY}:{ns_port}/"],
                                   capture_output=True, text=True)
                return r.stdout == "200"

            wait_for(ns_live, 20, "the server in the sandbox's namespace")
            # The host reaches every stand-in and its own addresses: they are live.
            for addr in STAND_INS.values():
                rc, out = host_curl(f"http://{addr}/")
                assert rc == 0 and f"addr={addr}" in out, (addr, out)
            for addr in hosts:
                rc, out = host_curl(f"http://{addr}:{port}/")
                assert rc == 0 and "host-server" in out, (addr, out)
            urls = [f"http://{addr}/" for addr in STAND_INS.values()]
            for addr in hosts:
                urls += [f"http://{addr}:{port}/", f"http://{addr}:{net_daemon.port}/"]
            urls += [f"http://{GATEWAY}:{p}/" for p in (ns_port, 80, 443, 15080, 15443, ENVD)]
            urls += [f"http://{a_link_host}:{port}/", f"http://{a_uplink}:{ns_port}/"]
            urls += [f"http://{b_addr}:{ENVD}/", f"http://{b_addr}:8000/"]
            urls = list(dict.fromkeys(urls))
            got = probe(a, urls)
            for url, (rc, text) in sorted(got.items()):
                print(f"  {url}: curl exit {rc} {text[:80]}")
            assert_nothing_answers(got, marks=(MARK, "host-server", "Directory listing"))
        finally:
            ns_srv.kill()
            ns_srv.wait(10)
            shutil.rmtree(ns_dir, ignore_errors=True)


def test_names_that_resolve_to_internal_addresses_are_refused(inet, net_daemon):
    with sandbox(network={"allow_out": ["private.test", "meta.test"], "deny_out": DENY_ALL}) as s:
        before = len(inet.requests())
        for name in ("private.test", "meta.test"):
            rc, out = curl(s, "--resolve", f"{name}:80:{SEVEN}", f"http://{name}/", m=5)
            print(f"{name}: curl exit {rc} {out.strip()[:200]}")
            assert not reached(out), f"{name} reached an internal address: {out}"
            rc, out = curl(s, "-k", "--resolve", f"{name}:443:{SEVEN}", f"https://{name}/", m=5)
            assert not reached(out), f"{name} (TLS) reached an internal address: {out}"
        hosts = [r["host"] for r in inet.requests()[before:]]
        assert not hosts, f"requests reached the fake internet: {inet.requests()[before:]}"


WS_SERVER = r"""
import base64, hashlib, socket, struct, threading
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
def serve(c):
    with c:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = c.recv(4096)
            if not chunk:
                return
            data += chunk
        head, buf = data.split(b"\r\n\r\n", 1)
        key = None
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"sec-websocket-key":
                key = v.strip()
        if key is None:
            c.sendall(b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        def need(n):
            nonlocal buf
            while len(buf) < n:
                chunk = c.recv(4096)
                if not chunk:
                    raise EOFError
                buf += chunk
            out, buf = buf[:n], buf[n:]
            return out
        while True:
            b0, b1 = need(2)
            op, n = b0 & 0x0F, b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", need(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", need(8))[0]
            mask = need(4) if b1 & 0x80 else b"\0\0\0\0"
            payload = bytes(x ^ mask[i % 4] for i, x in enumerate(need(n)))
            if op == 8:
                c.sendall(b"\x88\x00")
                return
            if op in (1, 2):
                size = bytes([n]) if n < 126 else b"\x7e" + struct.pack("!H", n)
                c.sendall(bytes([0x80 | op]) + size + payload)
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", 8765))
srv.listen(16)
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


def ws_echo(port, host, text):
    """A WebSocket handshake to 127.0.0.1:`port` with `Host: host`, then one masked text frame:
    (status line, echoed text or None)."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall(
            f"GET /echo HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                return data.split(b"\r\n")[0].decode(errors="replace"), None
            data += chunk
        head, buf = data.split(b"\r\n\r\n", 1)
        status = head.split(b"\r\n")[0].decode(errors="replace")
        if " 101 " not in status + " ":
            return status, None
        expected = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
        assert b"sec-websocket-accept: " + expected.lower() in head.lower(), head
        payload = text.encode()
        mask = os.urandom(4)
        s.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
        while len(buf) < 2:
            buf += s.recv(4096)
        n = buf[1] & 0x7F
        assert buf[0] == 0x81 and not buf[1] & 0x80 and n < 126, buf
        while len(buf) < 2 + n:
            buf += s.recv(4096)
        return status, buf[2:2 + n].decode()


def test_ingress_through_the_daemon(net_daemon, open_sbx):
    d, s = net_daemon, open_sbx
    s.files.write("/tmp/www0/marker-any.txt", "any")
    s.files.write("/tmp/www1/marker-local.txt", "local")
    s.commands.run("python3 -m http.server 8000 --bind 0.0.0.0 --directory /tmp/www0", background=True)
    s.commands.run("python3 -m http.server 8001 --bind 127.0.0.1 --directory /tmp/www1", background=True)
    host = s.get_host(8000)
    assert host == f"8000-{s.sandbox_id}.127.0.0.1:{d.port}", host
    r = expose(d, s, 8000)
    assert r.status_code == 200 and "marker-any.txt" in r.text, (r.status_code, r.text[:300])
    # Bound to the guest's loopback only: the agent forwards it (it looks every second).
    r = expose(d, s, 8001, timeout=60)
    assert r.status_code == 200 and "marker-local.txt" in r.text, (r.status_code, r.text[:300])
    # WebSocket through the same route.
    s.files.write("/tmp/ws.py", WS_SERVER)
    s.commands.run("python3 /tmp/ws.py", background=True)
    ws_host = s.get_host(8765)
    deadline = time.time() + 30
    while True:
        try:
            status, echoed = ws_echo(d.port, ws_host, "hello-ember")
        except OSError as e:  # the server is not up yet, or the proxy gave up on it
            status, echoed = repr(e), None
        if echoed is not None or time.time() > deadline:
            break
        time.sleep(0.5)
    assert " 101 " in status + " " and echoed == "hello-ember", (status, echoed)
    # envd's internal paths stay out of reach by Host route too.
    r = httpx.post(f"{d.url}/init", headers={"Host": s.get_host(ENVD)}, json={"accessToken": "mine"}, timeout=30)
    assert r.status_code == 403, (r.status_code, r.text)


def test_private_traffic_needs_the_token(net_daemon):
    d = net_daemon
    with sandbox(network={"allow_public_traffic": False}) as s:
        token = s.traffic_access_token
        assert token, "no traffic access token for a sandbox without public traffic"
        s.commands.run("python3 -m http.server 8000 --bind 0.0.0.0 --directory /tmp", background=True)
        r = expose(d, s, 8000, headers={"e2b-traffic-access-token": token})
        assert r.status_code == 200, (r.status_code, r.text[:300])
        r = httpx.get(f"{d.url}/", headers={"Host": s.get_host(8000)}, timeout=30)
        assert r.status_code == 403, (r.status_code, r.text[:300])
        r = httpx.get(f"{d.url}/", headers={"Host": s.get_host(8000), "e2b-traffic-access-token": token + "x"},
                      timeout=30)
        assert r.status_code == 403, (r.status_code, r.text[:300])


@pytest.mark.skipif(os.environ.get("EMBER_TEST_REGISTRIES") != "1",
                    reason="talks to the real package registries: set EMBER_TEST_REGISTRIES=1")
def test_pip_and_npm_install_through_the_host_ca():
    # A daemon of its own with the host's resolvers: the module's forwards DNS to the fake internet.
    if not os.path.exists(EMBER):
        pytest.skip(f"no ember binary at {EMBER}")
    d = Daemon(new_data_dir("ember-registry-test-"), free_port())
    try:
        d.start("--destroy-on-exit", "--pool", "0")
        with sdk_env(d), sandbox() as s:
            rc, out, err = sh(s, "pip install --user --no-cache-dir six 2>&1 || "
                                 "pip install --user --break-system-packages --no-cache-dir six", timeout=900)
            assert rc == 0, (out + err)[-3000:]
            assert sh(s, "python3 -c 'import six; print(six.__version__)'")[0] == 0
            rc, out, err = sh(s, "cd /tmp && npm install --no-audit --no-fund is-number", timeout=900)
            assert rc == 0, (out + err)[-3000:]
            assert sh(s, "test -f /tmp/node_modules/is-number/package.json")[0] == 0
    finally:
        left, left_dirs = finish_daemon(d)
    assert not left and not left_dirs, (left, left_dirs)


def test_a_crash_leaves_no_namespace_or_link_of_a_dead_sandbox(inet):
    if not os.path.exists(EMBER):
        pytest.skip(f"no ember binary at {EMBER}")
    d = Daemon(new_data_dir("ember-net-crash-"), free_port())
    args = ("--pool", "0", "--dns", DNS_IP)
    try:
        d.start(*args)
        r = api(d, "POST", "/sandboxes", json={"templateID": "base"})
        assert r.status_code == 201, r.text
        sid = r.json()["sandboxID"]
        ns = f"ember-{sid}"
        link = host_link_of(ns)
        assert link and link[0].startswith("emh"), (ns, link)
        before_ns, before_links = daemon_network_state(d)  # the sandbox's and the pre-made slots'
        d.stop(signal.SIGKILL)
        for pid, _ in qemu_processes(os.path.join(d.data_dir, "sandboxes", sid)):
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not qemu_processes(os.path.join(d.data_dir, "sandboxes", sid)), 15, "QEMU to die")
        print(f"after the crash: namespace {ns} {'left' if os.path.exists('/run/netns/' + ns) else 'gone'}, "
              f"link {link} {'left' if link_exists(link) else 'gone'}")
        d.start(*args, "--destroy-on-exit")
        wait_for(lambda: not os.path.exists(f"/run/netns/{ns}") and not link_exists(link), 60,
                 f"the dead sandbox's namespace {ns} and link {link} to go")
        print("the dead sandbox after the restart: GET", api(d, "GET", f"/sandboxes/{sid}").status_code)
        # A clean stop of a --destroy-on-exit daemon takes its sandboxes' and slots' namespaces
        # and links with it, and the slots the crashed daemon had made (reused or removed).
        r = api(d, "POST", "/sandboxes", json={"templateID": "base"})
        assert r.status_code == 201, r.text
        namespaces, links = daemon_network_state(d)
        assert f"ember-{r.json()['sandboxID']}" in namespaces and links, (namespaces, links)
        namespaces |= before_ns
        links |= before_links
        d.stop()
        assert d.proc.returncode == 0, d.log()
        assert not [ns for ns in namespaces if os.path.exists(f"/run/netns/{ns}")], namespaces
        # The kernel tears a deleted namespace (and the veth pair in it) down asynchronously.
        wait_for(lambda: not [ln for ln in links if link_exists(ln)], 20, f"the links {links} to go")
    finally:
        left, left_dirs = finish_daemon(d)
    assert not left and not left_dirs, (left, left_dirs)


def test_zz_a_clean_stop_leaves_no_link_namespace_or_host_table(net_daemon):
    """Runs last: stops the module's daemon (the fixture's tear-down then finds it stopped)."""
    d = net_daemon
    namespaces, links = daemon_network_state(d)
    assert namespaces and links, "the daemon holds no namespace (its pool sandbox and slots)"
    d.stop()
    assert d.proc.returncode == 0, d.log()
    left_ns = [ns for ns in namespaces if os.path.exists(f"/run/netns/{ns}")]
    assert not left_ns, left_ns
    # The kernel tears a deleted namespace (and the veth pair in it) down asynchronously.
    wait_for(lambda: not [ln for ln in links if link_exists(ln)], 20, f"the links {links} to go")
    slots = os.path.join(d.data_dir, "slots")
    assert not os.path.isdir(slots) or os.listdir(slots) == [], "slot markers left"
    others = emh_links()
    if others:
        print(f"host table check skipped: other Ember daemons still hold links {others}")
        return
    r = subprocess.run(["nft", "list", "table", "inet", "ember"], capture_output=True, text=True)
    assert r.returncode != 0, f"the host's inet ember table outlived every slot link:\n{r.stdout[:2000]}"
