"""`ember template build -f Dockerfile`, `ember template list` and `ember template rm` against a
real `ember serve`, and the template's sandboxes through the official SDK.

What is checked: a Dockerfile (ARG, ENV, WORKDIR, COPY, RUN, USER, EXPOSE skipped with a warning,
CMD) is parsed by the CLI, its COPY uploaded, the build's log streamed (step lines), the
template's name and ID printed; a sandbox from it has the file, the env, the workdir, the user and
the started server; list shows it, rm deletes it and a second rm fails clearly; a failing RUN
exits non-zero with its output and the reason; a bad key and an unreachable daemon give clear
errors.

Run: EMBER_AGENT_BIN=$PWD/target/release/ember-agent \
    target/sdk-venv/bin/python -m pytest tests/serve/test_cli_templates.py -q -p no:cacheprovider
"""

import os
import re
import shutil
import subprocess
import tempfile

import pytest
from e2b import Sandbox

from conftest import EMBER, KEY, free_port

BUILD_TIMEOUT = 900  # seconds (TCG, two cores)

DOCKERFILE = """\
# A template made by the CLI.
FROM e2bdev/base
ARG WORD=hello
ENV GREETING="$WORD from the cli" \\
    APP_MODE=cli
WORKDIR /opt/app
COPY hello.txt ./
RUN cat hello.txt > /tmp/seen-at-build && \\
    echo "$GREETING" >> /tmp/seen-at-build
USER root
EXPOSE 8000
CMD ["python3", "-m", "http.server", "8000"]
"""


def ember(*args, key=KEY, timeout=120):
    env = {**os.environ, "EMBER_API_KEY": key}
    env.pop("E2B_API_KEY", None)
    return subprocess.run([EMBER, "template", *args], env=env, capture_output=True, text=True, timeout=timeout)


_made_dirs = []


@pytest.fixture(scope="module", autouse=True)
def _remove_made_dirs():
    yield
    for d in _made_dirs:
        shutil.rmtree(d, ignore_errors=True)


def dockerfile_dir(text, files=None):
    d = tempfile.mkdtemp(prefix="ember-cli-test-")
    _made_dirs.append(d)
    with open(os.path.join(d, "Dockerfile"), "w") as f:
        f.write(text)
    for name, content in (files or {}).items():
        with open(os.path.join(d, name), "w") as f:
            f.write(content)
    return d


@pytest.fixture(scope="module")
def built(daemon):
    d = dockerfile_dir(DOCKERFILE, {"hello.txt": "hello from the context\n"})
    r = ember("build", "-f", os.path.join(d, "Dockerfile"), "--name", "cli-suite", "--url", daemon.url,
              "--ready-cmd", "curl -sf localhost:8000 >/dev/null", timeout=BUILD_TIMEOUT)
    return r


def test_build_streams_its_log_and_names_the_template(built):
    r = built
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"^\[1/\d+\] ", r.stdout, re.M), r.stdout
    assert "COPY hello.txt" in r.stdout, r.stdout
    m = re.search(r"Template cli-suite built \(ID (\S+)\)", r.stdout)
    assert m, r.stdout
    assert "EXPOSE" in r.stderr and "skipped" in r.stderr, r.stderr


def test_a_sandbox_from_it_has_the_file_env_workdir_user_and_server(built):
    assert built.returncode == 0, built.stdout + built.stderr
    s = Sandbox.create("cli-suite")
    try:
        r = s.commands.run("whoami; pwd; echo \"$GREETING|$APP_MODE\"; cat hello.txt /tmp/seen-at-build")
        assert r.stdout.splitlines() == [
            "root",
            "/opt/app",
            "hello from the cli|cli",
            "hello from the context",
            "hello from the context",
            "hello from the cli",
        ], r.stdout
        r = s.commands.run("curl -s localhost:8000/hello.txt")
        assert r.stdout == "hello from the context\n", r
    finally:
        s.kill()


def test_list_shows_it_and_rm_removes_it(daemon, built):
    assert built.returncode == 0, built.stdout + built.stderr
    template_id = re.search(r"Template cli-suite built \(ID (\S+)\)", built.stdout).group(1)
    r = ember("list", "--url", daemon.url)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].split() == ["NAME", "ID", "STATUS", "CPUS", "MEMORY", "FREE", "DISK", "CREATED"]
    row = next(line for line in r.stdout.splitlines() if line.startswith("cli-suite"))
    # Its sandboxes' free disk: at least the default 1024 MiB.
    free = int(re.search(r"(\d+) MiB\s+\d{4}-", row).group(1))
    assert template_id in row and "ready" in row and 1024 <= free <= 2200, r.stdout

    r = ember("rm", "cli-suite", "--url", daemon.url)
    assert r.returncode == 0, r.stderr
    assert "cli-suite" not in ember("list", "--url", daemon.url).stdout
    r = ember("rm", "cli-suite", "--url", daemon.url)
    assert r.returncode != 0
    assert "no template" in r.stderr and "cli-suite" in r.stderr, r.stderr


def test_a_failing_run_exits_non_zero_with_its_output(daemon):
    d = dockerfile_dir("FROM e2bdev/base\nRUN echo fine\nRUN echo boom-output; echo boom-err >&2; exit 3\n")
    r = ember("build", "-f", os.path.join(d, "Dockerfile"), "--name", "cli-failing", "--url", daemon.url,
              timeout=BUILD_TIMEOUT)
    assert r.returncode != 0, r.stdout
    assert "boom-output" in r.stdout and "boom-err" in r.stdout, r.stdout
    assert "failed" in r.stderr and "step" in r.stderr, r.stderr


def test_bad_input_and_connection_errors_are_clear(daemon, tmp_path):
    r = ember("list", "--url", daemon.url, key="e2b_" + "0" * 40)
    assert r.returncode != 0 and "API key" in r.stderr, r.stderr
    r = ember("list", "--url", f"http://127.0.0.1:{free_port()}")
    assert r.returncode != 0 and "ember serve" in r.stderr and "running" in r.stderr, r.stderr
    # Refused before anything reaches the daemon.
    d = dockerfile_dir("FROM e2bdev/base\nCOPY ../outside /x\n")
    r = ember("build", "-f", os.path.join(d, "Dockerfile"), "--name", "cli-bad", "--url", daemon.url)
    assert r.returncode != 0 and "outside the build context" in r.stderr, r.stderr
    d = dockerfile_dir("FROM e2bdev/base\nADD https://example.com/x.tgz /x\n")
    r = ember("build", "-f", os.path.join(d, "Dockerfile"), "--name", "cli-bad", "--url", daemon.url)
    assert r.returncode != 0 and "URL" in r.stderr, r.stderr
    # A bad name is the server's message.
    d = dockerfile_dir("FROM e2bdev/base\nRUN true\n")
    r = ember("build", "-f", os.path.join(d, "Dockerfile"), "--name", "Bad Name!", "--url", daemon.url)
    assert r.returncode != 0 and "400" in r.stderr, r.stderr
