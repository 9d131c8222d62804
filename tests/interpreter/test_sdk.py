"""The official Python SDK (`e2b-code-interpreter` 2.11.5) against the real server: proves its
parsing of the stream, results, charts, errors, contexts and HTTP errors end to end."""

import time

import pytest
from conftest import TOKEN

e2b_ci = pytest.importorskip("e2b_code_interpreter")
from e2b import ConnectionConfig, NotFoundException, SandboxException  # noqa: E402
from e2b.sandbox.main import Version  # noqa: E402


def make(server, token=TOKEN):
    headers = {"E2b-Sandbox-Id": "test", "E2b-Sandbox-Port": "49999"}
    config = ConnectionConfig(sandbox_url=server.url, api_key="e2b_" + "0" * 40, extra_sandbox_headers=headers)
    return e2b_ci.Sandbox(
        sandbox_id="test",
        sandbox_domain=None,
        envd_version=Version("0.6.13"),
        envd_access_token=token,
        traffic_access_token=None,
        connection_config=config,
    )


def test_sdk_run_code(server):
    sbx = make(server)
    seen = []
    ex = sbx.run_code("x = 2\nprint('hello')\nx * 21", on_stdout=lambda m: seen.append(m.line))
    assert ex.text == "42"
    assert ex.logs.stdout == ["hello\n"] and seen == ["hello\n"]
    assert ex.error is None and ex.execution_count >= 1
    assert sbx.run_code("x").text == "2"


def test_sdk_error_and_rich_results(server):
    sbx = make(server)
    ex = sbx.run_code("raise ValueError('bad')")
    assert ex.error.name == "ValueError" and ex.error.value == "bad" and "ValueError" in ex.error.traceback
    ex = sbx.run_code(
        "import matplotlib.pyplot as plt\nplt.bar(['a', 'b'], [3, 5])\nplt.title('Bars')\nplt.show()"
    )
    [res] = ex.results
    assert res.png and not res.is_main_result
    assert res.chart is not None and res.chart.title == "Bars" and res.chart.type.value == "bar"
    ex = sbx.run_code("import pandas as pd\npd.DataFrame({'a': [1]})")
    assert ex.results[0].data == {"a": [1]} and ex.results[0].is_main_result


def test_sdk_languages_contexts_and_envs(server, kernel_user):
    sbx = make(server)
    assert sbx.run_code("await Promise.resolve(7)", language="js").text == "7"
    assert sbx.run_code("echo hi", language="bash").logs.stdout == ["hi\n"]
    ctx = sbx.create_code_context(cwd=kernel_user.pw_dir, language="python")
    assert ctx.language == "python" and ctx.cwd == kernel_user.pw_dir
    assert ctx.id in [c.id for c in sbx.list_code_contexts()]
    assert sbx.run_code("import os; os.getcwd()", context=ctx).text == kernel_user.pw_dir
    ex = sbx.run_code("import os; os.environ['V']", context=ctx, envs={"V": "per-call"})
    assert ex.text == "per-call"
    assert sbx.run_code("import os; os.environ.get('V', 'gone')", context=ctx).text == "gone"
    sbx.restart_code_context(ctx)
    sbx.remove_code_context(ctx.id)
    with pytest.raises(NotFoundException):
        sbx.run_code("1", context=ctx)
    with pytest.raises(SandboxException) as e:
        sbx.run_code("1", language="cobol")
    assert "cobol" in str(e.value)


def test_sdk_timeout_interrupts(server):
    sbx = make(server)
    ctx = sbx.create_code_context()
    sbx.run_code("n = 0", context=ctx)
    start = time.time()
    with pytest.raises(Exception) as e:
        sbx.run_code("import time\nwhile True:\n    n += 1\n    time.sleep(0.01)", context=ctx, timeout=2)
    assert "timed out" in str(e.value).lower() and time.time() - start < 10
    assert sbx.run_code("n > 0", context=ctx).text == "True"


def test_sdk_without_token_is_refused(server):
    with pytest.raises(SandboxException) as e:
        make(server, token=None).run_code("1")
    assert "401" in str(e.value)


def test_js_sdk(server, kernel_user):
    import os
    import shutil
    import subprocess

    here = os.path.dirname(__file__)
    if not shutil.which("node") or not os.path.isdir(f"{here}/../js/node_modules/@e2b/code-interpreter"):
        pytest.skip("needs node and tests/js/node_modules (npm ci in tests/js)")
    r = subprocess.run(
        ["node", f"{here}/sdk_js.mjs", server.url, TOKEN, kernel_user.pw_dir],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout + r.stderr
