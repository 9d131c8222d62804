"""Template builds with the official SDK's `Template` builder (`e2b`, pinned) against `ember serve`.

What is checked: a template with COPY (files uploaded through the daemon's signed URL), RUN, ENV,
WORKDIR, USER and a start command with a ready check, whose sandboxes start with the server up and
the template's user, workdir and env vars as their defaults; a Dockerfile parsed by the SDK; the
layer cache (a rebuild takes every step from it, a changed step redoes only itself and what
follows, skip_cache redoes everything); a failing RUN reported with its output and step; a ready
command that never passes; `name:tag`; a template built from another; `Template.exists`, list,
get and delete; another team sees none of it; bad build bodies get 4xx with `{code, message}`.

Each build runs in a real sandbox (TCG here); nothing here reaches outside this machine.

Run: target/sdk-venv/bin/python -m pytest tests/serve/test_templates.py -q -p no:cacheprovider
"""

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time

import httpx
import pytest
from e2b import BuildException, CommandExitException, Sandbox, Template, wait_for_port

from conftest import KEY, Daemon, free_port

BUILD_TIMEOUT = 900  # seconds one SDK call may wait for a build (TCG, two cores)


def build(template, name, **kwargs):
    logs = []
    kwargs.setdefault("request_timeout", BUILD_TIMEOUT)
    info = Template.build(template, name, on_build_logs=lambda e: logs.append(e.message), **kwargs)
    return info, logs


def api(daemon, method, path, key=KEY, **kwargs):
    return httpx.request(method, f"{daemon.url}{path}", headers={"X-API-Key": key}, timeout=60, **kwargs)


# Programs the tiny test image carries (from this host, with their libraries): a shell and what
# the builder's COPY and the tests use.
TINY_PROGRAMS = ["bash", "sh", "cat", "ls", "mkdir", "cp", "rm", "chown", "chmod", "mktemp", "tar", "gzip", "id",
                 "sync", "basename", "dirname", "sleep", "env", "whoami", "pwd", "test", "stat"]


def run(*cmd, **kwargs):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kwargs)


def make_tiny_rootfs(root):
    """A root filesystem made here: this host's bash and a few tools with their libraries, in
    Debian's merged-/usr layout, and an /etc of its own."""
    files = set()
    for name in TINY_PROGRAMS:
        path = shutil.which(name)
        assert path, name
        files.add(path)
        for line in run("ldd", path).stdout.splitlines():
            lib = next((p for p in line.split() if p.startswith("/")), None)
            if lib:
                files.add(lib)
    for f in sorted(files):
        # Merged /usr: /bin, /lib, /lib64 and /sbin are links into /usr (made below).
        top = f.split("/")[1]
        inside = f"/usr{f}" if top in ("bin", "lib", "lib64", "sbin") else f
        dest = os.path.join(root, inside.lstrip("/"))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copy2(os.path.realpath(f), dest)
    for top in ["bin", "lib", "lib64", "sbin"]:
        os.makedirs(os.path.join(root, "usr", top), exist_ok=True)
        if not os.path.lexists(os.path.join(root, top)):
            os.symlink(f"usr/{top}", os.path.join(root, top))
    os.makedirs(os.path.join(root, "etc"), exist_ok=True)
    os.makedirs(os.path.join(root, "root"), exist_ok=True)
    with open(os.path.join(root, "etc/passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/bash\n")
    with open(os.path.join(root, "etc/group"), "w") as f:
        f.write("root:x:0:\n")
    with open(os.path.join(root, "etc/ember-tiny"), "w") as f:
        f.write("tiny image made by the test\n")


@pytest.fixture(scope="module")
def registry():
    """Debian's docker-registry on 127.0.0.1 with a tiny image pushed to it as `tiny/bash:1`
    (built here with umoci and pushed with skopeo); yields the registry's host:port."""
    for tool in ["docker-registry", "skopeo", "umoci"]:
        if not shutil.which(tool):
            pytest.fail(f"{tool} is missing: run crates/oci/tests/setup.sh")
    work = tempfile.mkdtemp(prefix="ember-registry-test-")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    addr = f"127.0.0.1:{port}"
    with open(f"{work}/config.yml", "w") as f:
        f.write(f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {work}/storage\n"
                f"http:\n  addr: {addr}\n")
    proc = subprocess.Popen(["docker-registry", "serve", f"{work}/config.yml"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.time() < deadline, "docker-registry did not start"
                time.sleep(0.2)
        layout, image = f"{work}/oci", f"{work}/oci:t"
        run("umoci", "init", "--layout", layout)
        run("umoci", "new", "--image", image)
        run("umoci", "unpack", "--image", image, f"{work}/bundle")
        make_tiny_rootfs(f"{work}/bundle/rootfs")
        run("umoci", "repack", "--refresh-bundle", "--image", image, f"{work}/bundle")
        run("umoci", "config", "--image", image, "--config.env", "FROM_IMAGE=image-env",
            "--config.env", "PATH=/usr/local/bin:/usr/bin:/bin", "--config.workingdir", "/work")
        with open(f"{work}/policy.json", "w") as f:
            json.dump({"default": [{"type": "insecureAcceptAnything"}]}, f)
        run("skopeo", "--policy", f"{work}/policy.json", "copy", "--quiet", "--dest-tls-verify=false",
            f"oci:{layout}:t", f"docker://{addr}/tiny/bash:1")
        yield addr
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def context():
    with tempfile.TemporaryDirectory() as d:
        os.makedirs(f"{d}/app/sub")
        with open(f"{d}/app/hello.txt", "w") as f:
            f.write("hello from the context\n")
        with open(f"{d}/app/sub/deep.txt", "w") as f:
            f.write("deep\n")
        with open(f"{d}/tool.sh", "w") as f:
            f.write("#!/bin/sh\necho tool-ran\n")
        yield d


@pytest.fixture(scope="module")
def web(daemon, context):
    """A template with every step type and a server as its start command."""
    t = (
        Template(file_context_path=context)
        .from_base_image()
        .copy("app", "/opt/app/")
        .copy("tool.sh", "/usr/local/bin/tool", mode=0o755, user="root")
        .run_cmd("useradd --create-home builder && echo made-by-$(whoami) > /opt/marker", user="root")
        .set_envs({"GREETING": "hello world", "APP_MODE": "test"})
        .set_workdir("/opt/app")
        .set_user("builder")
        .run_cmd("echo \"$GREETING from $(pwd) as $(whoami)\" > /tmp/seen-at-build")
        .set_start_cmd("python3 -m http.server 8123 --directory /opt/app", wait_for_port(8123))
    )
    info, logs = build(t, "web-suite")
    return t, info, logs


def test_a_template_gives_its_sandboxes_files_env_user_workdir_and_a_running_server(web):
    _, info, logs = web
    assert info.name == "web-suite" and info.template_id and info.build_id
    assert any("[3/7] RUN" in m for m in logs), "\n".join(logs)
    for _ in range(2):  # every new sandbox, not only the first
        s = Sandbox.create("web-suite")
        try:
            r = s.commands.run("whoami; pwd; echo \"$GREETING|$APP_MODE\"; cat /opt/marker /tmp/seen-at-build; tool")
            assert r.stdout.splitlines() == [
                "builder",
                "/opt/app",
                "hello world|test",
                "made-by-root",
                "hello world from /opt/app as builder",
                "tool-ran",
            ], r.stdout
            # COPY: a directory's contents into the destination, owned by the user current then.
            r = s.commands.run("cat hello.txt sub/deep.txt; stat -c '%U %a' /opt/app/hello.txt /usr/local/bin/tool")
            assert r.stdout.splitlines() == ["hello from the context", "deep", "user 644", "root 755"], r.stdout
            # The start command runs in the sandbox, restored with it.
            r = s.commands.run("curl -s localhost:8123/hello.txt")
            assert r.stdout == "hello from the context\n", r
            # A create's own env vars win over the template's.
            assert s.get_info().template_id
        finally:
            s.kill()
    s = Sandbox.create("web-suite", envs={"APP_MODE": "override"})
    try:
        assert s.commands.run("echo $APP_MODE $GREETING").stdout == "override hello world\n"
    finally:
        s.kill()


def test_a_rebuild_takes_every_step_from_the_cache(web):
    t, _, _ = web
    _, logs = build(t, "web-suite")
    cached = [m for m in logs if m.startswith("CACHED [")]
    assert len(cached) == 7, logs
    assert any("7 of 7 steps from the cache" in m for m in logs), logs


def test_a_changed_step_redoes_itself_and_what_follows_and_skip_cache_redoes_all(daemon):
    base = Template().from_base_image().run_cmd("echo one > /tmp/one")
    _, logs = build(base.run_cmd("echo two-a > /tmp/two"), "layers-suite")
    assert not any(m.startswith("CACHED") for m in logs), logs
    _, logs = build(Template().from_base_image().run_cmd("echo one > /tmp/one").run_cmd("echo two-b > /tmp/two"),
                    "layers-suite")
    assert any(m.startswith("CACHED [1/2]") for m in logs), logs
    assert any(m.startswith("[2/2] RUN echo two-b") for m in logs), logs
    s = Sandbox.create("layers-suite")
    try:
        assert s.commands.run("cat /tmp/one /tmp/two").stdout == "one\ntwo-b\n"
    finally:
        s.kill()
    _, logs = build(Template().from_base_image().run_cmd("echo one > /tmp/one").run_cmd("echo two-b > /tmp/two"),
                    "layers-suite", skip_cache=True)
    assert not any(m.startswith("CACHED") for m in logs), logs


def test_env_and_user_steps_save_no_layer_and_still_come_from_the_cache(daemon):
    layers = os.path.join(daemon.data_dir, "layers")
    before = set(os.listdir(layers)) if os.path.isdir(layers) else set()
    t = (Template().from_base_image().set_envs({"STATELESS_A": "a1"}).run_cmd("echo $STATELESS_A > /tmp/a")
         .set_user("root").set_envs({"STATELESS_B": "b2"}).run_cmd("id -un > /tmp/who").set_user("user"))
    _, logs = build(t, "stateless-suite")
    steps = sorted({m for m in logs if m.startswith("[") and "/" in m.split("]")[0]})
    saving = [m for m in steps if not m.split("] ", 1)[1].startswith(("ENV", "USER"))]
    made = {e for e in os.listdir(layers) if not e.endswith((".partial", ".tmp"))} - before
    made = {e for e in made if os.path.isdir(os.path.join(layers, e))}
    assert len(made) == len(saving) and len(steps) > len(saving), (made, steps)
    _, logs = build(t, "stateless-suite")
    n = len(steps)
    assert any(f"{n} of {n} steps from the cache" in m for m in logs), (steps, "\n".join(logs))
    assert len([m for m in logs if m.startswith("CACHED [")]) == n, logs
    s = Sandbox.create("stateless-suite")
    try:
        out = s.commands.run("cat /tmp/a /tmp/who; echo $STATELESS_A $STATELESS_B; whoami").stdout
        assert out == "a1\nroot\na1 b2\nuser\n", out
    finally:
        s.kill()


def test_a_failing_run_is_reported_with_its_output_and_step(daemon):
    t = Template().from_base_image().run_cmd("echo fine").run_cmd("echo boom-output; echo boom-err >&2; exit 3")
    logs = []
    with pytest.raises(BuildException) as e:
        Template.build(t, "failing-suite", on_build_logs=lambda x: logs.append(x.message), request_timeout=BUILD_TIMEOUT)
    assert "step 2" in str(e.value) and "exit" in str(e.value), str(e.value)
    assert "boom-output" in logs and "boom-err" in logs, logs
    # Nothing usable was left: a create from it fails clearly.
    r = api(daemon, "POST", "/sandboxes", json={"templateID": "failing-suite"})
    assert r.status_code == 400 and "no ready build" in r.json()["message"], r.text


def test_an_image_from_a_registry(daemon, context, registry):
    t = (
        Template(file_context_path=context)
        .from_image(f"{registry}/tiny/bash:1")
        .copy("tool.sh", "/opt/tool.sh")
        .run_cmd("echo \"built on $FROM_IMAGE in $(pwd) as $(whoami)\" > /tmp/built")
    )
    _, logs = build(t, "image-suite")
    assert any(m.startswith(f"pulled {registry}/tiny/bash:1") for m in logs), logs
    s = Sandbox.create("image-suite")
    try:
        r = s.commands.run("cat /tmp/built /etc/ember-tiny; echo $FROM_IMAGE; pwd; bash /opt/tool.sh")
        assert r.stdout.splitlines() == [
            "built on image-env in /work as root",
            "tiny image made by the test",
            "image-env",
            "/work",
            "tool-ran",
        ], r.stdout
    finally:
        s.kill()
    # An unknown tag in the same registry fails the build at its base.
    with pytest.raises(BuildException) as e:
        Template.build(Template().from_image(f"{registry}/tiny/bash:nope"), "image-missing-suite",
                       request_timeout=BUILD_TIMEOUT)
    assert "manifest unknown" in str(e.value).lower(), str(e.value)


def test_a_dockerfile(daemon, context, registry):
    dockerfile = f"""
FROM {registry}/tiny/bash:1
ENV DOCKER_VAR=from-dockerfile
WORKDIR /srv
COPY tool.sh ./tool.sh
RUN chmod +x tool.sh && ./tool.sh > ran.txt
USER user
"""
    t = Template(file_context_path=context).from_dockerfile(dockerfile)
    build(t, "dockerfile-suite")
    s = Sandbox.create("dockerfile-suite")
    try:
        r = s.commands.run("echo $DOCKER_VAR $FROM_IMAGE; pwd; whoami; cat ran.txt")
        assert r.stdout.splitlines() == ["from-dockerfile image-env", "/srv", "user", "tool-ran"], r.stdout
    finally:
        s.kill()


def test_name_tag_exists_from_template_list_get_and_delete(daemon, web):
    t = Template().from_template("web-suite").run_cmd("echo layered > /tmp/layered")
    info, _ = build(t, "tagged-suite:v1")
    assert info.tags == ["v1"], info
    assert Template.exists("tagged-suite") and not Template.exists("no-such-template-suite")
    s = Sandbox.create("tagged-suite:v1")
    try:
        # The parent's files, defaults and server, plus the new step.
        r = s.commands.run("cat /tmp/layered; whoami; curl -s localhost:8123/sub/deep.txt")
        assert r.stdout == "layered\nbuilder\ndeep\n", r.stdout
        _check_listing_and_delete(daemon, info, s)
    finally:
        s.kill()


def _check_listing_and_delete(daemon, info, running):
    r = api(daemon, "POST", "/sandboxes", json={"templateID": "tagged-suite"})
    assert r.status_code == 400 and "latest" in r.json()["message"], r.text
    listed = api(daemon, "GET", "/templates").json()
    mine = [x for x in listed if x["names"] == ["tagged-suite"]]
    assert len(mine) == 1 and mine[0]["buildStatus"] == "ready", listed
    got = api(daemon, "GET", f"/templates/{info.template_id}").json()
    assert got["builds"][0]["buildID"] == info.build_id and got["builds"][0]["status"] == "ready", got
    assert api(daemon, "DELETE", f"/templates/{info.template_id}").status_code == 204
    assert api(daemon, "GET", f"/templates/{info.template_id}").status_code == 404
    assert not Template.exists("tagged-suite")
    r = api(daemon, "POST", "/sandboxes", json={"templateID": "tagged-suite:v1"})
    assert r.status_code == 400, r.text
    # A sandbox made from it runs on, and pauses and resumes: its disk's backing is kept.
    running.pause()
    again = Sandbox.connect(running.sandbox_id)
    assert again.commands.run("cat /tmp/layered").stdout == "layered\n"


def test_another_team_sees_no_template(daemon, other_key, web):
    _, info, _ = web
    for method, path in [
        ("GET", f"/templates/{info.template_id}"),
        ("GET", f"/templates/{info.template_id}/builds/{info.build_id}/status"),
        ("GET", "/templates/aliases/web-suite"),
        ("DELETE", f"/templates/{info.template_id}"),
    ]:
        r = api(daemon, method, path, key=other_key)
        assert r.status_code == 404, (path, r.status_code, r.text)
    assert api(daemon, "GET", "/templates", key=other_key).json() == []
    r = api(daemon, "POST", "/sandboxes", key=other_key, json={"templateID": "web-suite"})
    assert r.status_code == 400, r.text
    # Still there for its own team.
    assert api(daemon, "GET", f"/templates/{info.template_id}").status_code == 200


def free_mib(sandbox):
    return int(sandbox.commands.run("df -B1M --output=avail / | tail -1").stdout)


def test_a_build_grows_its_disk_for_its_steps_and_to_its_min_free_disk(daemon):
    # One step writes 1.5 GiB, more than the 1 GiB its source (base) has free: the disk grows
    # while it runs. Then the template asks for 2 GiB free for its sandboxes.
    t = Template().from_base_image().run_cmd("dd if=/dev/zero of=/home/user/big bs=1M count=1536 status=none && sync")
    _, logs = build(t, "disk-suite", min_free_disk_mb=2048)
    assert any("disk grown" in line for line in logs), logs
    s = Sandbox.create("disk-suite")
    try:
        free = free_mib(s)
        # At least what was asked, and at most the growth step (1 GiB) more.
        assert 2048 <= free <= 2048 + 1024 + 128, free
        assert s.commands.run("stat -c %s /home/user/big").stdout.strip() == str(1536 << 20)
        listed = {t["names"][0]: t for t in api(daemon, "GET", "/templates").json()}
        assert 2048 <= listed["disk-suite"]["diskSizeMB"] <= free, listed["disk-suite"]
        detail = api(daemon, "GET", f"/sandboxes/{s.sandbox_id}").json()
        assert detail["diskSizeMB"] == listed["disk-suite"]["diskSizeMB"], detail
        # The bound holds: a write past the free space is ENOSPC in the guest.
        with pytest.raises(CommandExitException) as failed:
            s.commands.run(f"fallocate -l {free + 64}M /home/user/more", timeout=60)
        assert "No space left" in failed.value.stderr, failed.value.stderr
    finally:
        s.kill()


def test_bad_build_requests_get_clear_errors(daemon):
    r = api(daemon, "POST", "/v3/templates", json={"name": "Bad Name!"})
    assert r.status_code == 400 and "name" in r.json()["message"], r.text
    r = api(daemon, "POST", "/v3/templates", json={"name": "base"})
    assert r.status_code == 400, r.text
    r = api(daemon, "POST", "/v3/templates", content=b"{not json")
    assert r.status_code == 400, r.text
    for bad in (-1, 10241):
        r = api(daemon, "POST", "/v3/templates", json={"name": "bad-disk-suite", "minFreeDiskMb": bad})
        assert r.status_code == 400 and "minFreeDiskMb" in r.json()["message"], r.text
    made = api(daemon, "POST", "/v3/templates", json={"name": "bad-steps-suite", "cpuCount": 2, "memoryMB": 512})
    assert made.status_code == 202, made.text
    tid, bid = made.json()["templateID"], made.json()["buildID"]
    start = f"/v2/templates/{tid}/builds/{bid}"
    cases = [
        ({"steps": [{"type": "FROM", "args": ["x"]}]}, "unknown step type"),
        ({"steps": [{"type": "COPY", "args": ["a", "/b"], "filesHash": "0" * 64}]}, "were not uploaded"),
        ({"steps": [{"type": "COPY", "args": ["a", "/b"], "filesHash": "../x"}]}, "filesHash"),
        ({"steps": [{"type": "ENV", "args": ["1BAD", "x"]}]}, "env var name"),
        ({"fromImage": "python:3.12", "fromImageRegistry": {"type": "aws"}}, "only \"registry\""),
        ({"fromImage": "UPPER CASE!"}, "fromImage"),
        ({"fromTemplate": "no-such-template-suite"}, "not found"),
    ]
    for body, words in cases:
        r = api(daemon, "POST", start, json=body)
        assert 400 <= r.status_code < 500 and words in r.json()["message"], (body, r.status_code, r.text)
    r = api(daemon, "GET", f"/templates/{tid}/files/not-a-hash")
    assert r.status_code == 400, r.text
    r = httpx.put(f"{daemon.url}/templates/uploads/{'0' * 64}", content=b"x", timeout=10)
    assert r.status_code == 404, r.text
    # The build was never started: still waiting, and deletable.
    status = api(daemon, "GET", f"/templates/{tid}/builds/{bid}/status").json()
    assert status["status"] == "waiting", status
    assert api(daemon, "DELETE", f"/templates/{tid}").status_code == 204


def test_a_ready_command_that_never_passes_fails_the_build():
    data_dir = tempfile.mkdtemp(prefix="ember-templates-test-")
    os.chmod(data_dir, 0o755)
    d = Daemon(data_dir, free_port())
    d.start("--destroy-on-exit", "--pool", "0", "--build-ready-timeout", "8")
    try:
        t = Template().from_base_image().set_start_cmd("sleep 1000", "test -f /tmp/never")
        client_env = {"api_url": d.url, "api_key": KEY, "request_timeout": BUILD_TIMEOUT}
        with pytest.raises(BuildException) as e:
            Template.build(t, "never-ready", **client_env)
        assert "ready command" in str(e.value), str(e.value)
        r = httpx.get(f"{d.url}/templates", headers={"X-API-Key": KEY}, timeout=30).json()
        assert r[0]["buildStatus"] == "error", r
    finally:
        d.stop()
        import shutil

        shutil.rmtree(data_dir, ignore_errors=True)


def test_a_stop_during_a_build_ends_its_sandbox_and_fails_the_build():
    """A clean stop of `ember serve` (even one that leaves sandboxes running for the next start)
    destroys the VM of a build in progress, and the build is failed, not left `building`."""
    from conftest import qemu_processes

    data_dir = tempfile.mkdtemp(prefix="ember-templates-stop-")
    os.chmod(data_dir, 0o755)
    d = Daemon(data_dir, free_port())
    d.start("--pool", "0")
    try:
        t = Template().from_base_image().run_cmd("touch /tmp/started && sleep 600")
        done = []
        import threading

        def builder():
            try:
                Template.build(t, "stopped-mid-build", api_url=d.url, api_key=KEY, request_timeout=BUILD_TIMEOUT)
            except Exception as e:  # the daemon goes away under it
                done.append(e)

        threading.Thread(target=builder, daemon=True).start()
        deadline = time.time() + 600
        while time.time() < deadline:
            r = httpx.get(f"{d.url}/templates", headers={"X-API-Key": KEY}, timeout=30).json()
            building = [x for x in r if x.get("buildStatus") == "building"]
            if building and qemu_processes(data_dir):
                break
            time.sleep(1)
        assert building and qemu_processes(data_dir), (r, d.log())
        # The RUN step is under way (its log says so) before the stop.
        tid, bid = building[0]["templateID"], building[0]["buildID"]
        deadline = time.time() + 300
        while time.time() < deadline:
            status = httpx.get(f"{d.url}/templates/{tid}/builds/{bid}/status", headers={"X-API-Key": KEY},
                               timeout=30).json()
            if any("sleep 600" in (e.get("message") or "") for e in status.get("logEntries", [])):
                break
            time.sleep(1)
        d.stop()
        assert d.proc.returncode == 0, d.log()
        assert not qemu_processes(data_dir), "the build's VM outlived a clean stop"
        d.start("--pool", "0", "--destroy-on-exit")
        status = httpx.get(f"{d.url}/templates/{tid}/builds/{bid}/status", headers={"X-API-Key": KEY},
                           timeout=30).json()
        assert status["status"] == "error", status
        assert not [p for p in os.listdir(os.path.join(data_dir, "templates")) if p.endswith(".partial")]
    finally:
        d.stop()
        for pid, _ in qemu_processes(data_dir):
            os.kill(pid, 9)
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.mark.skipif(os.environ.get("EMBER_TEST_REGISTRIES") != "1",
                    reason="talks to the real package registries: set EMBER_TEST_REGISTRIES=1")
def test_a_build_installs_from_the_package_registries(daemon):
    """A build's RUN steps reach the package registries through the sandbox network, as
    `pip install` and `npm install` in a Dockerfile do; sandboxes of the template have them."""
    t = (Template().from_template("python").run_cmd("pip install --no-cache-dir --disable-pip-version-check six")
         .run_cmd("mkdir -p ~/app && cd ~/app && npm install --no-audit --no-fund is-number@7"))
    build(t, "registries-suite")
    s = Sandbox.create("registries-suite")
    try:
        out = s.commands.run("python -c 'import six; print(six.__name__)' && cd ~/app && "
                             "node -e 'console.log(require(\"is-number\")(5))'").stdout
        assert out == "six\ntrue\n", out
    finally:
        s.kill()
