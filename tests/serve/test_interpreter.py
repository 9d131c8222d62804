"""The official code-interpreter SDK (`e2b_code_interpreter`, pinned in tests/sdk/requirements.txt)
against `ember serve`: `run_code` and the code contexts of template `code-interpreter-v1` (the SDK's
default), through the daemon's port like every other sandbox request.

What is checked: state kept between cells, stdout/stderr streamed to the callbacks in order while
the cell runs, errors (name, value, traceback), rich results (a matplotlib figure as PNG and as an
e2b-charts chart, a pandas DataFrame as `data`, HTML/Markdown/JSON/LaTeX/SVG and unknown MIME types,
display results apart from the cell's value), execution counts, contexts (cwd, list, restart,
remove), environment variables per call and per sandbox, the execution time-out interrupting the
kernel, reconnecting, JavaScript/TypeScript, bash and R cells, an unknown language, two sandboxes'
kernels kept apart, executions in one context run one at a time, a kernel that dies, a cell printing
~100 MB, a stream silent for longer than a keepalive period, the async SDK, and a sandbox without
public traffic (the SDK sends the traffic token; a request without it is refused).

No test reaches anything outside this machine: the cells need no network.

Run: target/sdk-venv/bin/python -m pytest tests/serve/test_interpreter.py -q -p no:cacheprovider
"""

import asyncio
import base64
import contextlib
import json
import struct
import threading
import time

import httpx
import pytest
from e2b_code_interpreter import (
    AsyncSandbox,
    NotFoundException,
    Sandbox,
    SandboxException,
    TimeoutException,
)
from e2b_code_interpreter.charts import BarChart, ChartType, LineChart

INTERPRETER_PORT = 49999
# The first create of the template may build it (many minutes under emulation).
FIRST_CREATE_DEADLINE = 3600
LIFETIME = 1800  # seconds a test sandbox may live: the slowest test stays well under it
CELL_TIMEOUT = 120  # a cell's time-out where a test gives none (the SDK's default is 300 s)


class BoundedSandbox(Sandbox):
    """The SDK's Sandbox with a shorter default execution time-out, so a server that never ends a
    stream fails a test in minutes, not ten (the SDK's deadline is about twice `timeout`)."""

    def run_code(self, code, *args, timeout=None, **kwargs):
        return super().run_code(code, *args, timeout=timeout or CELL_TIMEOUT, **kwargs)


def stdout(execution):
    return "".join(execution.logs.stdout)


def stderr(execution):
    return "".join(execution.logs.stderr)


def create(**kwargs):
    return BoundedSandbox.create(timeout=LIFETIME, **kwargs)


@contextlib.contextmanager
def sandbox(**kwargs):
    s = create(**kwargs)
    try:
        yield s
    finally:
        with contextlib.suppress(Exception):
            s.kill()


def joined(threads, seconds):
    deadline = time.monotonic() + seconds
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    return not any(t.is_alive() for t in threads)


@pytest.fixture(scope="module")
def interpreter(daemon):
    """The daemon once template `code-interpreter-v1` is built and its first sandbox runs a cell."""
    deadline = time.time() + FIRST_CREATE_DEADLINE
    while True:
        try:
            first = create(request_timeout=FIRST_CREATE_DEADLINE)
            break
        except TimeoutException:
            if time.time() > deadline:
                raise
            time.sleep(5)
    try:
        ex = first.run_code("1 + 1", timeout=600)
        assert ex.error is None and ex.text == "2", ex
    finally:
        first.kill()
    return daemon


@pytest.fixture
def ci(interpreter):
    s = create(envs={"FROM_CREATE": "sandbox-level"}, metadata={"suite": "interpreter"})
    yield s
    with contextlib.suppress(Exception):
        s.kill()


# --- cells, output, results ----------------------------------------------------------------------


def test_state_is_kept_between_cells(ci):
    ex = ci.run_code("x = 41\nimport math")
    assert ex.error is None and ex.results == [] and ex.text is None, ex
    ex = ci.run_code("x += 1\nx")
    assert ex.error is None and ex.text == "42", ex
    assert [r.is_main_result for r in ex.results] == [True]
    ci.run_code("def times_x(n):\n    return n * x")
    assert ci.run_code("times_x(2) + math.floor(0.5)").text == "84"
    # A quoted string value comes back without its quotes.
    assert ci.run_code("'abc' + 'def'").text == "abcdef"
    # An error does not lose the state.
    assert ci.run_code("undefined_name").error.name == "NameError"
    assert ci.run_code("x").text == "42"


def test_stdout_and_stderr_stream_to_the_callbacks_in_order(ci):
    out, err = [], []
    code = (
        "import sys, time\n"
        "for i in range(5):\n"
        "    print(f'out {i}', flush=True)\n"
        "    print(f'err {i}', file=sys.stderr, flush=True)\n"
        "    time.sleep(0.1)\n"
    )
    ex = ci.run_code(code, on_stdout=out.append, on_stderr=err.append, timeout=120)
    assert ex.error is None, ex.error
    assert "".join(m.line for m in out) == "".join(f"out {i}\n" for i in range(5))
    assert "".join(m.line for m in err) == "".join(f"err {i}\n" for i in range(5))
    assert all(m.error is False for m in out) and all(m.error is True for m in err)
    assert [m.line for m in out] == ex.logs.stdout and [m.line for m in err] == ex.logs.stderr
    # Streamed while the cell runs, not handed over at its end.
    seen = []
    t0 = time.monotonic()
    ex = ci.run_code(
        "import time\nprint('early', flush=True)\ntime.sleep(4)\nprint('late')",
        on_stdout=lambda m: seen.append((time.monotonic() - t0, m.line)),
        timeout=120,
    )
    done = time.monotonic() - t0
    assert stdout(ex) == "early\nlate\n", ex.logs
    first = next((at for at, line in seen if "early" in line), None)
    assert first is not None, seen
    assert done - first > 2.5, f"'early' reached the callback at {first:.1f}s, the cell ended at {done:.1f}s"


def test_error_has_name_value_and_traceback(ci):
    errors = []
    ex = ci.run_code("def boom():\n    raise ValueError('bad value 7')\n\nboom()", on_error=errors.append)
    assert ex.error is not None and ex.results == []
    assert (ex.error.name, ex.error.value) == ("ValueError", "bad value 7")
    assert "boom" in ex.error.traceback and "ValueError" in ex.error.traceback
    assert "\x1b[" not in ex.error.traceback, "colours in the traceback"
    assert [(e.name, e.value) for e in errors] == [("ValueError", "bad value 7")]
    # Output before the error is kept.
    ex = ci.run_code("print('before')\n1 / 0")
    assert stdout(ex) == "before\n" and ex.error.name == "ZeroDivisionError"
    ex = ci.run_code("def broken(:\n    pass")
    assert ex.error.name == "SyntaxError", ex.error
    assert ci.run_code("'fine'").error is None


def test_matplotlib_line_chart_as_png_and_chart(ci):
    code = """
import matplotlib.pyplot as plt
import numpy as np

x = np.linspace(0, 10, 50)
plt.figure(figsize=(6, 4))
plt.plot(x, np.sin(x), label='sin')
plt.plot(x, np.cos(x), label='cos')
plt.xlabel('Time (s)')
plt.ylabel('Amplitude (Hz)')
plt.title('Waves')
plt.legend()
plt.show()
"""
    ex = ci.run_code(code, timeout=180)
    assert ex.error is None, ex.error
    images = [r for r in ex.results if r.png]
    assert len(images) == 1, ex.results
    r = images[0]
    assert r.is_main_result is False
    png = base64.b64decode(r.png)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    assert 200 <= width <= 2000 and 150 <= height <= 1500 and width > height, (width, height)
    assert len(png) > 5000
    chart = r.chart
    assert isinstance(chart, LineChart) and chart.type == ChartType.LINE, r.formats()
    assert chart.title == "Waves"
    assert (chart.x_label, chart.y_label, chart.x_unit, chart.y_unit) == ("Time (s)", "Amplitude (Hz)", "s", "Hz")
    assert [e.label for e in chart.elements] == ["sin", "cos"]
    assert [len(e.points) for e in chart.elements] == [50, 50]
    assert chart.elements[0].points[0] == (0.0, 0.0) and chart.elements[1].points[0] == (0.0, 1.0)
    assert chart.elements[0].points[-1][0] == pytest.approx(10.0)
    assert chart.x_scale == "linear" and chart.x_ticks and chart.y_tick_labels
    assert r.chart.to_dict()["type"] == "line"


def test_matplotlib_bar_chart(ci):
    code = """
import matplotlib.pyplot as plt

authors = ['Author A', 'Author B', 'Author C', 'Author D']
sales = [100, 200, 300, 400]
plt.figure(figsize=(10, 6))
plt.bar(authors, sales, label='Books Sold', color='blue')
plt.xlabel('Authors')
plt.ylabel('Number of Books Sold')
plt.title('Book Sales by Authors')
plt.tight_layout()
plt.show()
"""
    ex = ci.run_code(code, timeout=180)
    assert ex.error is None, ex.error
    charts = [r.chart for r in ex.results if r.chart]
    assert len(charts) == 1, ex.results
    chart = charts[0]
    assert isinstance(chart, BarChart) and chart.type == ChartType.BAR
    assert chart.title == "Book Sales by Authors"
    assert (chart.x_label, chart.y_label, chart.x_unit, chart.y_unit) == ("Authors", "Number of Books Sold", None, None)
    assert [b.label for b in chart.elements] == ["Author A", "Author B", "Author C", "Author D"]
    assert [b.value for b in chart.elements] == [100, 200, 300, 400]
    assert [b.group for b in chart.elements] == ["Books Sold"] * 4


def test_dataframe_as_data(ci):
    ex = ci.run_code("import pandas as pd\npd.DataFrame({'a': [1, 2, 3], 'b': ['x', 'y', 'z']})", timeout=120)
    assert ex.error is None, ex.error
    assert len(ex.results) == 1
    r = ex.results[0]
    assert r.is_main_result is True
    assert r.data == {"a": [1, 2, 3], "b": ["x", "y", "z"]}, r.data
    assert "<table" in r.html and "a" in r.text and "z" in r.text
    assert {"text", "html", "data"} <= set(r.formats())


def test_display_results_are_not_the_main_result(ci):
    got = []
    ex = ci.run_code("from IPython.display import display\ndisplay(11)\ndisplay(22)\n33", on_result=got.append)
    assert [(r.text, r.is_main_result) for r in ex.results] == [("11", False), ("22", False), ("33", True)]
    assert ex.text == "33"
    assert [r.text for r in got] == ["11", "22", "33"]
    # Only displays: no main result, no text.
    ex = ci.run_code("display(44)")
    assert [(r.text, r.is_main_result) for r in ex.results] == [("44", False)] and ex.text is None


def test_rich_formats_and_unknown_mime_types(ci):
    code = r"""
from IPython.display import HTML, JSON, Latex, Markdown, SVG, display
display(HTML('<b>bold</b>'))
display(Markdown('# Title'))
display(JSON({'k': [1, 2]}))
display(Latex(r'$x^2$'))
display(SVG('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>'))
display({'application/x-ember': 'custom', 'text/plain': 'custom text'}, raw=True)
"""
    ex = ci.run_code(code)
    assert ex.error is None, ex.error
    assert all(r.is_main_result is False for r in ex.results)
    r = ex.results
    assert len(r) == 6, r
    assert r[0].html == "<b>bold</b>"
    assert r[1].markdown == "# Title"
    assert r[2].json == {"k": [1, 2]}
    assert r[3].latex == "$x^2$"
    assert r[4].svg.startswith("<svg") and "10" in r[4].svg
    assert r[5].text == "custom text" and r[5].extra == {"application/x-ember": "custom"}, r[5].formats()


def test_execution_count_increments(ci):
    counts = [ci.run_code(c).execution_count for c in ("1", "2", "print(3)")]
    assert counts[0] is not None and counts[0] >= 1, counts
    assert counts == [counts[0], counts[0] + 1, counts[0] + 2]
    # An error counts too.
    assert ci.run_code("1 / 0").execution_count == counts[0] + 3


# --- contexts ------------------------------------------------------------------------------------


def test_code_contexts(ci):
    listed = ci.list_code_contexts()
    defaults = {c.language: c for c in listed}
    assert {"python", "javascript"} <= set(defaults), listed
    assert defaults["python"].cwd == "/home/user"
    assert ci.run_code("import os\nos.getcwd()").text == "/home/user"

    ctx = ci.create_code_context(cwd="/tmp")
    assert ctx.id and ctx.language == "python" and ctx.cwd == "/tmp"
    assert ctx.id not in {c.id for c in listed}
    assert ctx.id in {c.id for c in ci.list_code_contexts()}
    assert ci.run_code("import os\nos.getcwd()", context=ctx).text == "/tmp"
    # A context is a kernel of its own.
    ci.run_code("only_here = 5", context=ctx)
    assert ci.run_code("only_here", context=ctx).text == "5"
    assert ci.run_code("only_here").error.name == "NameError"
    # Both a context and a language: refused by the SDK before any request.
    with pytest.raises(SandboxException):
        ci.run_code("1", context=ctx, language="python")

    ci.restart_code_context(ctx)
    assert ci.run_code("only_here", context=ctx).error.name == "NameError"
    assert ci.run_code("2 + 2", context=ctx).text == "4"

    ci.remove_code_context(ctx.id)
    assert ctx.id not in {c.id for c in ci.list_code_contexts()}
    with pytest.raises(NotFoundException):
        ci.run_code("1", context=ctx)
    with pytest.raises(NotFoundException):
        ci.restart_code_context(ctx)
    with pytest.raises(NotFoundException):
        ci.remove_code_context(ctx)
    # The default context is untouched.
    assert ci.run_code("1 + 1").text == "2"


def test_contexts_of_other_languages_with_a_cwd(ci):
    js = ci.create_code_context(cwd="/tmp", language="javascript")
    assert js.language == "javascript" and js.cwd == "/tmp"
    assert ci.run_code("process.cwd()", context=js).text == "/tmp"
    sh = ci.create_code_context(cwd="/usr", language="bash")
    assert sh.language == "bash" and sh.cwd == "/usr"
    assert stdout(ci.run_code("pwd", context=sh)).strip() == "/usr"
    langs = [c.language for c in ci.list_code_contexts() if c.id in (js.id, sh.id)]
    assert sorted(langs) == ["bash", "javascript"]


# --- environment variables ---------------------------------------------------------------------


def test_env_vars_per_call(ci):
    read = "import os\nprint(os.environ.get('PER_CALL', 'unset'), os.environ.get('FROM_CREATE', 'unset'))"
    ex = ci.run_code(read, envs={"PER_CALL": "only-now"})
    assert stdout(ex) == "only-now sandbox-level\n", ex.logs
    assert stdout(ci.run_code(read)) == "unset sandbox-level\n"
    # Overriding the sandbox's variable lasts one call too.
    assert stdout(ci.run_code(read, envs={"FROM_CREATE": "overridden"})) == "unset overridden\n"
    assert stdout(ci.run_code(read)) == "unset sandbox-level\n"
    # Values needing quoting.
    tricky = "a 'b' \"c\" \\d\n$e `f` {g}"
    ex = ci.run_code("import os\nprint(repr(os.environ['TRICKY']))", envs={"TRICKY": tricky})
    assert ex.error is None and stdout(ex) == repr(tricky) + "\n", (ex.error, ex.logs)
    # Code indented as a whole (a triple-quoted string in the caller's source), with and without envs.
    indented = "\n    import os\n    print(os.environ.get('PER_CALL', 'unset'))\n    "
    assert stdout(ci.run_code(indented)) == "unset\n"
    ex = ci.run_code(indented, envs={"PER_CALL": "indented"})
    assert ex.error is None and stdout(ex) == "indented\n", (ex.error, ex.logs)
    # In a subprocess the kernel starts.
    ex = ci.run_code("import subprocess\nprint(subprocess.run(['sh', '-c', 'echo $PER_CALL'], capture_output=True, text=True).stdout, end='')",
                     envs={"PER_CALL": "inherited"})
    assert stdout(ex) == "inherited\n", (ex.error, ex.logs)
    # Other languages.
    ex = ci.run_code("process.env.PER_CALL", language="javascript", envs={"PER_CALL": "js-now"})
    assert ex.text == "js-now", (ex.error, ex.results)
    assert ci.run_code("process.env.PER_CALL ?? 'unset'", language="javascript").text == "unset"
    ex = ci.run_code("echo \"bash:$PER_CALL\"", language="bash", envs={"PER_CALL": "sh-now"})
    assert "bash:sh-now" in stdout(ex), ex.logs
    ex = ci.run_code("echo \"bash:${PER_CALL:-unset}\"", language="bash")
    assert "bash:unset" in stdout(ex), ex.logs


def test_sandbox_env_vars_reach_every_context(ci):
    assert stdout(ci.run_code("import os\nprint(os.environ['FROM_CREATE'])")) == "sandbox-level\n"
    ctx = ci.create_code_context()
    assert stdout(ci.run_code("import os\nprint(os.environ['FROM_CREATE'])", context=ctx)) == "sandbox-level\n"
    assert ci.run_code("process.env.FROM_CREATE", language="javascript").text == "sandbox-level"
    assert "sandbox-level" in stdout(ci.run_code("echo $FROM_CREATE", language="bash"))


# --- time-outs, reconnecting, long and silent cells ----------------------------------------------


def interpreter_log(sbx):
    """The tail of the guest's ember-interpreter log, for a failing assertion's message."""
    with contextlib.suppress(Exception):
        return sbx.commands.run("tail -20 /var/log/ember/*.log", user="root", timeout=60).stdout
    return "(log unavailable)"


def test_timeout_interrupts_the_cell_and_the_context_goes_on(ci):
    ci.run_code("before = 'kept'\ncounter = 0")
    with pytest.raises(TimeoutException):
        ci.run_code("while True:\n    counter += 1", timeout=3)
    # Interrupted, not killed: a kernel that ignored the interrupt is killed after a grace period
    # and its successor has no `before`; a cell never interrupted makes this call time out.
    ex = ci.run_code("before")
    assert ex.error is None and ex.text == "kept", (ex, interpreter_log(ci))
    # The loop stopped: the counter no longer moves.
    a = ci.run_code("counter").text
    time.sleep(1)
    assert ci.run_code("counter").text == a and int(a) > 0


def test_timeout_in_a_javascript_cell(ci):
    ci.run_code("globalThis.before = 'kept'", language="javascript")
    with pytest.raises(TimeoutException):
        ci.run_code("while (true) {}", language="javascript", timeout=3)
    # Deno takes `interrupt_request` (it exits on SIGINT): the kernel and its state survive.
    ex = ci.run_code("globalThis.before", language="javascript")
    assert ex.error is None and ex.text == "kept", (ex, interpreter_log(ci))


def test_reconnect_sees_earlier_state(ci):
    ci.run_code("kept = 'across connect'")
    again = Sandbox.connect(ci.sandbox_id)
    assert again.sandbox_id == ci.sandbox_id
    assert again.run_code("kept").text == "across connect"
    ctx = ci.create_code_context()
    assert ctx.id in {c.id for c in again.list_code_contexts()}


def test_a_silent_cell_outlives_the_keepalive_period(ci):
    t0 = time.monotonic()
    ex = ci.run_code("import time\ntime.sleep(12)\n'woke'", timeout=120)
    assert ex.error is None and ex.text == "woke"
    assert time.monotonic() - t0 >= 12


def test_executions_in_one_context_run_one_at_a_time(ci):
    marks, errors = {}, []

    def run(name, code):
        try:
            marks[name] = ci.run_code(code, timeout=120)
        except Exception as e:  # reported below
            errors.append(e)

    a = threading.Thread(target=run, args=("a", "import time\nstart_a = time.time()\ntime.sleep(3)\nend_a = time.time()"), daemon=True)
    b = threading.Thread(target=run, args=("b", "start_b = time.time()"), daemon=True)
    a.start()
    time.sleep(1)
    b.start()
    assert joined([a, b], 150), "run_code still running"
    assert not errors, errors
    assert marks["a"].error is None and marks["b"].error is None
    assert ci.run_code("start_b >= end_a").text == "True"


# --- languages -----------------------------------------------------------------------------------


def test_javascript_and_typescript_cells(ci):
    ci.run_code("let counter = 40", language="javascript")
    assert ci.run_code("counter += 2; counter", language="javascript").text == "42"
    ex = ci.run_code("const v = await new Promise((r) => setTimeout(() => r(7), 100)); v * 6", language="javascript")
    assert ex.error is None and ex.text == "42", ex
    ex = ci.run_code("console.log('from js'); console.error('js err')", language="javascript")
    assert stdout(ex) == "from js\n" and stderr(ex) == "js err\n", ex.logs
    ex = ci.run_code("throw new Error('js boom')", language="javascript")
    assert ex.error is not None and ex.error.name and "js boom" in ex.error.value + ex.error.traceback, ex.error
    ex = ci.run_code("function sub(x: number, y: number): number {\n  return x - y\n}\nsub(1, 2)", language="typescript")
    assert ex.error is None and ex.text == "-1", ex
    ex = ci.run_code("interface P { n: number }\nconst p: P = { n: await Promise.resolve(5) }\np.n * 2", language="typescript")
    assert ex.error is None and ex.text == "10", ex
    # The short names.
    assert ci.run_code("1 + 1", language="js").text == "2"
    assert ci.run_code("const t: string = 'ts'; t.length", language="ts").text == "2"
    # JavaScript state is not Python's.
    assert ci.run_code("counter").error.name == "NameError"


def test_bash_cells(ci):
    ex = ci.run_code("echo hello-bash; echo bash-err >&2", language="bash")
    assert "hello-bash" in stdout(ex) and "bash-err" in stdout(ex) + stderr(ex), ex.logs
    ci.run_code("export KEPT=7; cd /tmp", language="bash")
    ex = ci.run_code("echo \"$KEPT $(pwd)\"", language="bash")
    assert "7 /tmp" in stdout(ex), ex.logs


def test_r_cells(ci):
    # IRkernel starts on the first R cell (it is not warm in the template).
    ci.run_code("x <- 40", language="r", timeout=300)
    # IRkernel shows values with display_data, not execute_result, and display_data is not the
    # main result (as in E2B's server): the value is among the results, `text` is None.
    ex = ci.run_code("x + 2", language="r")
    assert ex.error is None and [r.text for r in ex.results] == ["[1] 42"], ex
    assert "from r" in stdout(ci.run_code("cat('from r\\n')", language="r")), ex.logs
    err = ci.run_code("stop('r failed')", language="r").error
    assert err is not None and "r failed" in err.value, err
    ex = ci.run_code("Sys.getenv('PER_CALL')", language="r", envs={"PER_CALL": "r-now"})
    assert [r.text for r in ex.results] == ['[1] "r-now"'], ex
    ex = ci.run_code("Sys.getenv('FROM_CREATE')", language="r")
    assert [r.text for r in ex.results] == ['[1] "sandbox-level"'], ex
    # A plot comes back as a PNG.
    ex = ci.run_code("plot(1:10)", language="r")
    assert any(r.png for r in ex.results), ex.results


def test_unknown_language_is_a_clear_error(ci):
    for call in (lambda: ci.run_code("1", language="cobol85"), lambda: ci.create_code_context(language="cobol85")):
        with pytest.raises(SandboxException) as e:
            call()
        assert not isinstance(e.value, TimeoutException), e.value
        assert "cobol85" in str(e.value), str(e.value)
    assert ci.run_code("1 + 1").text == "2"
    assert "cobol85" not in {c.language for c in ci.list_code_contexts()}


# --- isolation, crashes, big output --------------------------------------------------------------


def test_two_sandboxes_do_not_share_kernels(ci):
    with sandbox() as other:
        ci.run_code("shared_probe = 1")
        ci.run_code("var jsProbe = 1", language="javascript")
        assert other.run_code("shared_probe").error.name == "NameError"
        assert other.run_code("typeof jsProbe", language="javascript").text == "undefined"
        # Both at once.
        got, errors = {}, []

        def run(name, s):
            try:
                got[name] = s.run_code(f"import time\ntime.sleep(2)\n'{name}'", timeout=120).text
            except Exception as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=run, args=(n, s), daemon=True) for n, s in (("one", ci), ("two", other))]
        for t in threads:
            t.start()
        assert joined(threads, 150), "run_code still running"
        assert not errors and got == {"one": "one", "two": "two"}, (errors, got)


def test_a_kernel_that_dies_is_an_error_and_the_next_cell_works(ci):
    try:
        ex = ci.run_code("import os\nos._exit(1)", timeout=120)
        assert ex.error is not None, f"no error for a kernel that died: {ex}"
    except TimeoutException:
        raise
    except SandboxException:
        pass  # an HTTP error from the server is also a clear error
    ex = ci.run_code("1 + 1", timeout=240)
    assert ex.error is None and ex.text == "2", ex
    assert ci.commands.run("echo alive").stdout == "alive\n"


def test_a_cell_printing_100_mb_ends_and_the_sandbox_stays_healthy(ci, interpreter):
    received = [0]

    def count(msg):
        received[0] += len(msg.line)

    code = "import sys\nline = 'x' * 1023 + '\\n'\nfor _ in range(100 * 1024):\n    sys.stdout.write(line)\nprint('end')"
    t0 = time.monotonic()
    try:
        ex = ci.run_code(code, on_stdout=count, timeout=300)
        outcome = f"completed: {received[0]} bytes, error {ex.error}"
        assert received[0] <= 100 * 1024 * 1024 + 4096
    except TimeoutException:
        raise AssertionError(f"still streaming after {time.monotonic() - t0:.0f}s ({received[0]} bytes)")
    except SandboxException as e:
        outcome = f"cut: {e!r} after {received[0]} bytes"
    took = time.monotonic() - t0
    print(f"100 MB cell {outcome} in {took:.0f}s")
    ex = ci.run_code("'healthy'", timeout=120)
    assert ex.error is None and ex.text == "healthy", (outcome, ex)
    assert ci.commands.run("echo ok").stdout == "ok\n"
    assert httpx.get(f"{interpreter.url}/health", timeout=10).status_code == 204


# --- the async SDK ------------------------------------------------------------------------------


def test_async_sdk(interpreter):
    async def main():
        s = await AsyncSandbox.create(timeout=LIFETIME)
        try:
            out = []

            async def on_stdout(msg):
                out.append(msg.line)

            ex = await s.run_code("print('async out')\n21 * 2", on_stdout=on_stdout, timeout=120)
            assert ex.text == "42" and "".join(out) == "async out\n", ex
            ctx = await s.create_code_context(cwd="/tmp")
            assert (await s.run_code("import os\nos.getcwd()", context=ctx)).text == "/tmp"
            assert ctx.id in {c.id for c in await s.list_code_contexts()}
            await s.remove_code_context(ctx)
            with pytest.raises(NotFoundException):
                await s.run_code("1", context=ctx)
            with pytest.raises(TimeoutException):
                await s.run_code("while True: pass", timeout=3)
            assert (await s.run_code("'after'", timeout=60)).text == "after"
        finally:
            await s.kill()

    asyncio.run(asyncio.wait_for(main(), 900))


# --- private traffic and the raw port -----------------------------------------------------------


def test_port_49999_through_the_daemon(ci, interpreter):
    assert ci.run_code("1").text == "1"  # the context's first execution is the SDK's (with the tokens)
    host = ci.get_host(INTERPRETER_PORT)
    assert host.startswith(f"{INTERPRETER_PORT}-{ci.sandbox_id}.")
    r = httpx.get(f"{interpreter.url}/health", headers={"Host": host}, timeout=30)
    assert r.status_code == 200, (r.status_code, r.text)
    r = httpx.get(f"{interpreter.url}/contexts", headers={"Host": host}, timeout=30)
    assert r.status_code == 200 and {"python", "javascript"} <= {c["language"] for c in r.json()}, r.text
    # Executions need the envd access token (Ember is stricter than E2B here; the SDK sends it).
    r = httpx.post(f"{interpreter.url}/execute", headers={"Host": host}, json={"code": "ran = 1"}, timeout=60)
    assert r.status_code == 401, (r.status_code, r.text)
    r = httpx.post(f"{interpreter.url}/execute", headers={"Host": host, "X-Access-Token": "wrong"},
                   json={"code": "ran = 1"}, timeout=60)
    assert r.status_code == 401, (r.status_code, r.text)
    assert ci.run_code("'ran' in globals()").text == "False"
    host = {"Host": host, "X-Access-Token": ci._envd_access_token}
    # The raw stream: one JSON object per line, no blank lines, `type` on each.
    r = httpx.post(f"{interpreter.url}/execute", headers=host, json={"code": "print('raw')\n5"}, timeout=60)
    assert r.status_code == 200, (r.status_code, r.text)
    lines = r.text.splitlines()
    assert lines and all(line.strip() for line in lines), r.text
    events = [json.loads(line) for line in lines]
    types = [e["type"] for e in events]
    assert "number_of_executions" in types and "stdout" in types and "result" in types, types
    assert next(e for e in events if e["type"] == "result")["text"] == "5"
    assert next(e for e in events if e["type"] == "stdout")["text"] == "raw\n"
    # Both a context and a language: 400.
    ctx = httpx.get(f"{interpreter.url}/contexts", headers=host, timeout=30).json()[0]
    r2 = httpx.post(f"{interpreter.url}/execute", headers=host, timeout=30,
                    json={"code": "1", "context_id": ctx["id"], "language": "python"})
    assert r2.status_code == 400, (r2.status_code, r2.text)
    r2 = httpx.delete(f"{interpreter.url}/contexts/no-such-context", headers=host, timeout=30)
    assert r2.status_code == 404, (r2.status_code, r2.text)


def test_private_sandbox_sends_and_needs_the_traffic_token(interpreter):
    d = interpreter
    with sandbox(network={"allow_public_traffic": False}, envs={"PRIVATE_ENV": "seen"}) as s:
        token = s.traffic_access_token
        assert token, "no traffic access token for a sandbox without public traffic"
        assert s._envd_access_token, "no envd access token"
        # The SDK sends E2B-Traffic-Access-Token (and X-Access-Token on /execute).
        ex = s.run_code("import os\nprint(os.environ['PRIVATE_ENV'])\n40 + 2", timeout=120)
        assert ex.error is None and ex.text == "42" and stdout(ex) == "seen\n", ex
        ctx = s.create_code_context(cwd="/tmp")
        assert ctx.id in {c.id for c in s.list_code_contexts()}
        assert s.run_code("import os\nos.getcwd()", context=ctx).text == "/tmp"
        s.restart_code_context(ctx)
        s.remove_code_context(ctx)
        # Without the token, by Host route and by header route: refused.
        host = s.get_host(INTERPRETER_PORT)
        routes = [{"Host": host}, {"E2b-Sandbox-Id": s.sandbox_id, "E2b-Sandbox-Port": str(INTERPRETER_PORT)}]
        for route in routes:
            for method, path, body in (("GET", "/health", None), ("GET", "/contexts", None),
                                       ("POST", "/execute", {"code": "refused_ran = True"})):
                for extra in ({}, {"e2b-traffic-access-token": token + "x"}):
                    r = httpx.request(method, f"{d.url}{path}", headers={**route, **extra}, json=body, timeout=30)
                    assert r.status_code == 403, (route, extra, method, path, r.status_code, r.text[:300])
        # The right token opens it.
        r = httpx.get(f"{d.url}/health", headers={"Host": host, "e2b-traffic-access-token": token}, timeout=30)
        assert r.status_code == 200, (r.status_code, r.text)
        # Nothing ran for the refused requests.
        assert s.run_code("'refused_ran' in globals()").text == "False"
