"""A fake internet for the network tests, made of a network namespace the test owns.

`FakeInternet` creates namespace `ember-test-inet-<pid>` (never matched by the daemon's clean-up,
which takes `ember-<20 lowercase alphanumerics>` only) joined to the host by a veth pair: the host
side `fitest<pid>` has 198.51.100.1/24 (TEST-NET-2), the namespace side 198.51.100.2/24 plus
.7, .8, .9 and .53, and stand-ins for ranges a sandbox may never reach, each with a host route
through the veth: 10.123.45.67 (private), 100.100.100.100 (CGNAT) and 169.254.77.77 (link-local,
as a metadata service). The namespace has no default route: nothing in it can send a packet
anywhere but back to the host.

One helper process inside the namespace serves:
- HTTP on port 80 of .7, .8, .9 and each stand-in: `GET /` answers
  `fake-internet addr=<address reached> host=<Host header>`;
- HTTPS on port 443 of .7 and .8 (a self-signed certificate for fake.test, allowed.test,
  *.allowed.test and denied.test): the same body with ` sni=<server name the client sent>`;
- on .7:9000 a TCP sink that answers the number of bytes it read once the client shuts down
  its side (a throughput benchmark), and on .7:9999 a UDP echo;
- DNS on .53:53 (UDP and TCP): A records from `NAMES`, NXDOMAIN for other names; every question
  is recorded (`queries`, `mark`, `asked_since`) so a test can tell whether a lookup got out.
Every HTTP request is recorded too (`requests`).

Run `python3 tests/serve/fakenet.py` as root for a self-check from the host.
"""

import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time

NET = "198.51.100"
HOST_IP = f"{NET}.1"
PEER_IP = f"{NET}.2"
WEB = (f"{NET}.7", f"{NET}.8", f"{NET}.9")
TLS = (f"{NET}.7", f"{NET}.8")
DNS_IP = f"{NET}.53"
SINK = (f"{NET}.7", 9000)
UDP_ECHO = (f"{NET}.7", 9999)
STAND_INS = {"private": "10.123.45.67", "cgnat": "100.100.100.100", "metadata": "169.254.77.77"}
NAMES = {
    "allowed.test": f"{NET}.7",
    "www.allowed.test": f"{NET}.7",
    "denied.test": f"{NET}.8",
    "private.test": STAND_INS["private"],
    "meta.test": STAND_INS["metadata"],
}
CERT_NAMES = "DNS:allowed.test,DNS:*.allowed.test,DNS:denied.test"
NS_PREFIX = "ember-test-inet-"
LINK_PREFIX = "fitest"
PEER_LINK = "inet0"

# The helper run inside the namespace: stdlib only, all servers in threads of one process.
SERVER = r'''
import http.server, json, os, socket, socketserver, ssl, struct, sys, threading

work = sys.argv[1]
cfg = json.load(open(os.path.join(work, "config.json")))
lock = threading.Lock()

def record(name, line):
    with lock, open(os.path.join(work, name), "a") as f:
        f.write(line + "\n")

class Web(http.server.BaseHTTPRequestHandler):
    def setup(self):
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(15)
            self.request.do_handshake()
        super().setup()

    def do_GET(self):
        addr = self.connection.getsockname()[0]
        host = self.headers.get("Host", "")
        body = f"fake-internet addr={addr} host={host}"
        if isinstance(self.connection, ssl.SSLSocket):
            sni = getattr(self.connection, "ember_sni", None)
            body += f" sni={sni}"
        record("http.log", json.dumps({"addr": addr, "host": host, "path": self.path,
                                       "tls": isinstance(self.connection, ssl.SSLSocket)}))
        data = (body + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):
        pass

class Threaded(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        pass  # refused handshakes, resets: the tests look at what got through

class TlsServer(Threaded):
    def get_request(self):
        sock, addr = self.socket.accept()
        return self.ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

def sni_callback(sslsock, name, ctx):
    try:
        sslsock.ember_sni = name
    except AttributeError:
        pass

class Sink(socketserver.BaseRequestHandler):
    def handle(self):
        n = 0
        self.request.settimeout(120)
        while True:
            chunk = self.request.recv(1 << 16)
            if not chunk:
                break
            n += len(chunk)
        self.request.sendall(f"{n}\n".encode())

class TcpServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        pass

def dns_answer(msg, proto):
    if len(msg) < 12:
        return None
    ident, flags, qd = struct.unpack("!3H", msg[:6])
    if flags & 0x8000 or qd != 1:
        return None
    i, labels = 12, []
    while True:
        n = msg[i]
        i += 1
        if n == 0:
            break
        if n & 0xC0:
            return None
        labels.append(msg[i:i + n].decode("ascii", "replace"))
        i += n
    qtype, qclass = struct.unpack("!HH", msg[i:i + 4])
    question = msg[12:i + 4]
    name = ".".join(labels).lower()
    record("dns.log", json.dumps({"name": name, "type": qtype, "proto": proto}))
    addr = cfg["names"].get(name)
    answers, count, rcode = b"", 0, 0
    if addr is None:
        rcode = 3
    elif qtype == 1 and qclass == 1:
        answers = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 5, 4) + socket.inet_aton(addr)
        count = 1
    out_flags = 0x8000 | (flags & 0x7800) | 0x0400 | (flags & 0x0100) | 0x0080 | rcode
    return struct.pack("!6H", ident, out_flags, 1, count, 0, 0) + question + answers

class DnsUdp(socketserver.BaseRequestHandler):
    def handle(self):
        data, sock = self.request
        try:
            out = dns_answer(data, "udp")
        except (IndexError, struct.error):
            return
        if out:
            sock.sendto(out, self.client_address)

class DnsTcp(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.settimeout(10)
        f = self.request.makefile("rb")
        while True:
            head = f.read(2)
            if len(head) < 2:
                return
            msg = f.read(struct.unpack("!H", head)[0])
            try:
                out = dns_answer(msg, "tcp")
            except (IndexError, struct.error):
                return
            if not out:
                return
            self.request.sendall(struct.pack("!H", len(out)) + out)

class UdpServer(socketserver.ThreadingMixIn, socketserver.UDPServer):
    daemon_threads = True
    allow_reuse_address = True

class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        data, sock = self.request
        sock.sendto(data, self.client_address)

servers = []
for addr in cfg["web"]:
    servers.append(Threaded((addr, 80), Web))
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(os.path.join(work, "cert.pem"), os.path.join(work, "key.pem"))
ctx.sni_callback = sni_callback
for addr in cfg["tls"]:
    s = TlsServer((addr, 443), Web)
    s.ctx = ctx
    servers.append(s)
servers.append(TcpServer(tuple(cfg["sink"]), Sink))
servers.append(UdpServer(tuple(cfg["udp_echo"]), Echo))
servers.append(UdpServer((cfg["dns"], 53), DnsUdp))
servers.append(TcpServer((cfg["dns"], 53), DnsTcp))
for s in servers:
    threading.Thread(target=s.serve_forever, daemon=True).start()
open(os.path.join(work, "ready"), "w").close()
threading.Event().wait()
'''


def _ip(*args, check=True):
    r = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")
    return r


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _default_route():
    """(via, dev) of the main table's IPv4 default route, or None."""
    out = _ip("-4", "-o", "route", "show", "default", check=False).stdout.strip()
    if not out:
        return None
    via = re.search(r"\bvia (\S+)", out)
    dev = re.search(r"\bdev (\S+)", out.splitlines()[0])
    return (via.group(1) if via else None, dev.group(1) if dev else None)


def route_conflict(addr):
    """Why the host already routes `addr` some other way than its default route (or None)."""
    r = _ip("-4", "-o", "route", "get", addr, check=False)
    if r.returncode != 0:
        # No route at all (no default route either): ours will be the only one.
        return None
    line = r.stdout.strip().splitlines()[0] if r.stdout.strip() else ""
    if line.startswith(("local ", "broadcast ", "unreachable ", "prohibit ", "blackhole ")):
        return f"{addr}: {line}"
    default = _default_route()
    via = re.search(r"\bvia (\S+)", line)
    dev = re.search(r"\bdev (\S+)", line)
    got = (via.group(1) if via else None, dev.group(1) if dev else None)
    if default is None or got != default:
        return f"{addr} is routed specifically on this host ({line!r}; default route {default})"
    return None


class FakeInternet:
    """The fake internet; use as a context manager, or `start()` and `stop()`."""

    names = NAMES
    stand_ins = STAND_INS

    def __init__(self, pid=None):
        pid = pid or os.getpid()
        self.ns = f"{NS_PREFIX}{pid}"
        self.link = f"{LINK_PREFIX}{pid}"
        self.work = None
        self.proc = None
        self.started = False

    # --- set-up and tear-down -------------------------------------------------------------

    def unusable(self):
        """Why the fake internet cannot be made here (a reason to skip), or None."""
        if os.geteuid() != 0:
            return "needs root (network namespaces and routes)"
        for tool in ("ip", "openssl"):
            if not shutil.which(tool):
                return f"needs {tool}"
        clean_stale()
        if os.path.exists(f"/run/netns/{self.ns}") or os.path.exists(f"/sys/class/net/{self.link}"):
            return f"{self.ns} or {self.link} already exists"
        if f" {NET}." in _ip("-4", "-o", "addr", "show", check=False).stdout:
            return f"the host already has an address in {NET}.0/24"
        for addr in (HOST_IP, PEER_IP, *WEB, DNS_IP, *STAND_INS.values()):
            why = route_conflict(addr)
            if why:
                return why
        return None

    def start(self):
        why = self.unusable()
        if why:
            raise RuntimeError(f"cannot make the fake internet: {why}")
        self.work = tempfile.mkdtemp(prefix="ember-fakenet-")
        self.started = True
        try:
            self._make_links()
            self._make_cert()
            self._start_servers()
        except BaseException:
            self.stop()
            raise
        return self

    def _make_links(self):
        _ip("netns", "add", self.ns)
        _ip("link", "add", self.link, "type", "veth", "peer", "name", PEER_LINK, "netns", self.ns)
        # No IPv6 on either side: nothing but the addresses below ever crosses the pair.
        _sysctl_host(f"net/ipv6/conf/{self.link}/disable_ipv6", "1")
        subprocess.run(
            ["ip", "netns", "exec", self.ns, "sh", "-c",
             "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6; echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6;"
             f" echo 1 > /proc/sys/net/ipv6/conf/{PEER_LINK}/disable_ipv6"],
            check=True, capture_output=True,
        )
        _ip("addr", "add", f"{HOST_IP}/24", "dev", self.link)
        _ip("link", "set", self.link, "up")
        script = [f"link set lo up", f"addr add {PEER_IP}/24 dev {PEER_LINK}"]
        for addr in (*WEB, DNS_IP, *STAND_INS.values()):
            script.append(f"addr add {addr}/32 dev {PEER_LINK}")
        script.append(f"link set {PEER_LINK} up")
        r = subprocess.run(["ip", "-n", self.ns, "-batch", "-"], input="\n".join(script) + "\n",
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"ip -n {self.ns} -batch: {r.stderr.strip()}")
        for addr in STAND_INS.values():
            _ip("route", "add", f"{addr}/32", "dev", self.link)

    def _make_cert(self):
        r = subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=fake.test",
             "-addext", f"subjectAltName={CERT_NAMES}", "-days", "2",
             "-keyout", os.path.join(self.work, "key.pem"), "-out", os.path.join(self.work, "cert.pem")],
            capture_output=True, text=True,
        )
        if r.returncode != 0:
            raise RuntimeError(f"openssl req: {r.stderr.strip()}")

    def _start_servers(self):
        cfg = {"web": [*WEB, *STAND_INS.values()], "tls": list(TLS), "sink": list(SINK),
               "udp_echo": list(UDP_ECHO), "dns": DNS_IP, "names": NAMES}
        with open(os.path.join(self.work, "config.json"), "w") as f:
            json.dump(cfg, f)
        with open(os.path.join(self.work, "server.py"), "w") as f:
            f.write(SERVER)
        for name in ("dns.log", "http.log"):
            open(os.path.join(self.work, name), "w").close()
        log = open(os.path.join(self.work, "server.log"), "w")
        # `ip netns exec` execs the command, so the pid is the helper's own.
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, sys.executable, "-u", os.path.join(self.work, "server.py"), self.work],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.time() + 30
        while not os.path.exists(os.path.join(self.work, "ready")):
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the fake internet's servers did not start:\n{self._server_log()}")
            time.sleep(0.05)

    def _server_log(self):
        try:
            with open(os.path.join(self.work, "server.log")) as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def stop(self):
        """Kills the servers and removes the namespace, the veth pair, the routes and the files."""
        if not self.started:
            return
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for addr in STAND_INS.values():
            _ip("route", "del", f"{addr}/32", "dev", self.link, check=False)
        _ip("netns", "del", self.ns, check=False)
        # Deleting the namespace takes the veth pair with it; make sure of it.
        if os.path.exists(f"/sys/class/net/{self.link}"):
            _ip("link", "del", self.link, check=False)
        if self.work:
            shutil.rmtree(self.work, ignore_errors=True)
        self.started = False

    def leftovers(self):
        """What of the fake internet is still on the host (empty after `stop`)."""
        left = []
        if os.path.exists(f"/run/netns/{self.ns}"):
            left.append(f"namespace {self.ns}")
        if os.path.exists(f"/sys/class/net/{self.link}"):
            left.append(f"link {self.link}")
        routes = _ip("-4", "route", "show", check=False).stdout
        for addr in (NET + ".0/24", *STAND_INS.values()):
            if addr in routes:
                left.append(f"route {addr}")
        return left

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # --- what the servers saw ------------------------------------------------------------

    def _log(self, name):
        try:
            with open(os.path.join(self.work, name)) as f:
                return [json.loads(line) for line in f if line.strip()]
        except (OSError, ValueError):
            return []

    def queries(self):
        """Every DNS question the resolver got: dicts with name, type (1 = A) and proto."""
        return self._log("dns.log")

    def mark(self):
        """A point in the query log, for `asked_since`."""
        return len(self.queries())

    def asked_since(self, mark):
        """The names asked since `mark`."""
        return [q["name"] for q in self.queries()[mark:]]

    def requests(self):
        """Every HTTP(S) request the web servers answered: dicts with addr, host, path, tls."""
        return self._log("http.log")

    # --- from the host ---------------------------------------------------------------------

    def check_from_host(self):
        """Asserts from the host's namespace that every server answers (so the stand-ins are
        live, and a sandbox that does not reach them is refused, not merely unlucky)."""
        for addr in (*WEB, *STAND_INS.values()):
            rc, out = host_curl(f"http://{addr}/")
            assert rc == 0 and f"fake-internet addr={addr} host={addr}" in out, (addr, rc, out)
        for addr in TLS:
            rc, out = host_curl("-k", "--resolve", f"allowed.test:443:{addr}", "https://allowed.test/")
            assert rc == 0 and f"addr={addr} host=allowed.test sni=allowed.test" in out, (addr, rc, out)
        with socket.create_connection(SINK, timeout=5) as s:
            s.sendall(b"x" * 100000)
            s.shutdown(socket.SHUT_WR)
            assert s.makefile().readline().strip() == "100000"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            s.sendto(b"echo-me", UDP_ECHO)
            assert s.recvfrom(100)[0] == b"echo-me"
        mark = self.mark()
        assert dns_query("allowed.test") == (0, [NAMES["allowed.test"]])
        assert dns_query("meta.test", tcp=True) == (0, [STAND_INS["metadata"]])
        assert dns_query("nothing-here.test") == (3, [])
        assert self.asked_since(mark) == ["allowed.test", "meta.test", "nothing-here.test"], self.queries()


def _sysctl_host(key, value):
    with open(f"/proc/sys/{key}", "w") as f:
        f.write(value)


def host_curl(*args, timeout=5):
    """curl from the host's namespace (no proxy): (exit code, stdout + stderr)."""
    r = subprocess.run(["curl", "-sS", "--noproxy", "*", "-m", str(timeout), *args],
                       capture_output=True, text=True, timeout=timeout + 10)
    return r.returncode, r.stdout + r.stderr


def dns_query(name, tcp=False, server=DNS_IP, timeout=5):
    """Asks `server` for the A records of `name`: (rcode, addresses)."""
    ident = os.getpid() & 0xFFFF
    q = struct.pack("!6H", ident, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack("!HH", 1, 1)
    if tcp:
        with socket.create_connection((server, 53), timeout=timeout) as s:
            s.sendall(struct.pack("!H", len(q)) + q)
            f = s.makefile("rb")
            msg = f.read(struct.unpack("!H", f.read(2))[0])
    else:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.sendto(q, (server, 53))
            msg = s.recvfrom(4096)[0]
    got_id, flags, _, ancount = struct.unpack("!4H", msg[:8])
    assert got_id == ident
    i = len(q)  # the answer echoes the question
    addrs = []
    for _ in range(ancount):
        if msg[i] & 0xC0:
            i += 2
        else:
            while msg[i]:
                i += msg[i] + 1
            i += 1
        rtype, _, _, rdlen = struct.unpack("!HHIH", msg[i:i + 10])
        i += 10
        if rtype == 1:
            addrs.append(socket.inet_ntoa(msg[i:i + rdlen]))
        i += rdlen
    return flags & 0xF, addrs


def clean_stale():
    """Removes fake internets left by test processes that died (namespace and host link)."""
    for name in os.listdir("/run/netns") if os.path.isdir("/run/netns") else []:
        pid = name.removeprefix(NS_PREFIX)
        if name.startswith(NS_PREFIX) and pid.isdigit() and not _pid_alive(int(pid)):
            _ip("netns", "del", name, check=False)
    for link in os.listdir("/sys/class/net"):
        pid = link.removeprefix(LINK_PREFIX)
        if link.startswith(LINK_PREFIX) and pid.isdigit() and not _pid_alive(int(pid)):
            for addr in STAND_INS.values():
                _ip("route", "del", f"{addr}/32", "dev", link, check=False)
            _ip("link", "del", link, check=False)


if __name__ == "__main__":
    fi = FakeInternet()
    why = fi.unusable()
    if why:
        print(f"skipped: {why}")
        sys.exit(0)
    # Ember daemons (other engineers' test runs) may add or remove their emh* links meanwhile.
    ours = lambda out: sorted(line for line in out.splitlines() if "emh" not in line)
    links_before = ours(_ip("-br", "link", check=False).stdout)
    routes_before = ours(_ip("route", check=False).stdout)
    with fi:
        fi.check_from_host()
        print(f"fake internet {fi.ns} / {fi.link}: every server answers from the host")
        print(f"  dns queries: {fi.queries()}")
        print(f"  http requests: {len(fi.requests())}")
    assert not fi.leftovers(), fi.leftovers()
    assert ours(_ip("-br", "link", check=False).stdout) == links_before
    assert ours(_ip("route", check=False).stdout) == routes_before
    print("torn down: no namespace, link or route left")
