// The official code-interpreter JS SDK (`@e2b/code-interpreter`, pinned in package.json) drives a
// real `ember serve` started here, with sandboxes of template `code-interpreter-v1` (the SDK's
// default): state kept between cells, onStdout/onStderr, errors, a matplotlib chart (PNG and
// chart), a DataFrame as data, contexts with a cwd, env vars, the execution time-out interrupting
// the kernel, JavaScript/TypeScript/bash cells, an unknown language, and a sandbox without public
// traffic (the SDK sends the traffic token). No cell reaches the network.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { startDaemon, stopDaemon } from './daemon.mjs'

const LIFETIME_MS = 1_800_000 // a test sandbox's time-out: the slowest test stays well under it
const FIRST_CREATE_MS = 3_600_000 // the first create may build the template (many minutes)
let daemon, url

let Sandbox, NotFoundError, SandboxError, TimeoutError

const CELL_TIMEOUT_MS = 120_000
const stdout = (ex) => ex.logs.stdout.join('')
const stderr = (ex) => ex.logs.stderr.join('')

async function withSandbox(opts, fn) {
  // Calls that start a kernel (new and restarted contexts) wait for it: 30-60 s for Python under
  // TCG on a busy 2-core machine, past the SDK's default 60 s request time-out.
  const sbx = await Sandbox.create({ timeoutMs: LIFETIME_MS, requestTimeoutMs: 300_000, ...opts })
  // A cell that starts its language's kernel waits for it too: the first bash cell takes about
  // 30 s under TCG on an idle machine (bash_kernel's imports alone 9 s), more under load, past
  // the SDK's default 60 s cell time-out. As in the Python suite, cells get 120 s.
  const runCode = sbx.runCode.bind(sbx)
  sbx.runCode = (code, runOpts = {}) => runCode(code, { timeoutMs: CELL_TIMEOUT_MS, ...runOpts })
  try {
    return await fn(sbx)
  } finally {
    await sbx.kill().catch(() => {})
  }
}

before(
  async () => {
    // No pool of `base` sandboxes: every test here uses the code-interpreter template.
    daemon = await startDaemon('interpreter', ['--pool', '0', '--interpreter-pool', '1'])
    url = daemon.url
    ;({ Sandbox, NotFoundError, SandboxError, TimeoutError } = await import('@e2b/code-interpreter'))
    // Wait for the template: its first create may build it.
    const until = Date.now() + FIRST_CREATE_MS
    let first
    for (;;) {
      try {
        first = await Sandbox.create({ timeoutMs: LIFETIME_MS, requestTimeoutMs: FIRST_CREATE_MS })
        break
      } catch (e) {
        if (!(e instanceof TimeoutError) || Date.now() > until) throw e
        await new Promise((r) => setTimeout(r, 5000))
      }
    }
    try {
      const ex = await first.runCode('1 + 1', { timeoutMs: 600_000 })
      assert.equal(ex.text, '2')
    } finally {
      await first.kill()
    }
  },
  { timeout: FIRST_CREATE_MS + 1_200_000 },
)

after(() => stopDaemon(daemon))

test('state is kept between cells and the execution count goes up', { timeout: 300_000 }, () =>
  withSandbox({}, async (sbx) => {
    const first = await sbx.runCode('x = 41')
    assert.equal(first.error, undefined)
    assert.deepEqual(first.results, [])
    const ex = await sbx.runCode('x += 1\nx')
    assert.equal(ex.text, '42')
    assert.equal(ex.results.length, 1)
    assert.equal(ex.results[0].isMainResult, true)
    assert.equal(ex.executionCount, first.executionCount + 1)
    assert.equal((await sbx.runCode("'abc' + 'def'")).text, 'abcdef')
  }),
)

test('onStdout and onStderr get the output in order, while the cell runs', { timeout: 300_000 }, () =>
  withSandbox({}, async (sbx) => {
    const out = []
    const err = []
    const code = [
      'import sys, time',
      'for i in range(5):',
      "    print(f'out {i}', flush=True)",
      "    print(f'err {i}', file=sys.stderr, flush=True)",
      '    time.sleep(0.1)',
    ].join('\n')
    const ex = await sbx.runCode(code, { onStdout: (m) => out.push(m), onStderr: (m) => err.push(m), timeoutMs: 120_000 })
    assert.equal(ex.error, undefined)
    assert.equal(out.map((m) => m.line).join(''), [0, 1, 2, 3, 4].map((i) => `out ${i}\n`).join(''))
    assert.equal(err.map((m) => m.line).join(''), [0, 1, 2, 3, 4].map((i) => `err ${i}\n`).join(''))
    assert.ok(out.every((m) => m.error === false) && err.every((m) => m.error === true))
    assert.deepEqual(ex.logs.stdout, out.map((m) => m.line))
    const t0 = Date.now()
    let early
    const late = await sbx.runCode("import time\nprint('early', flush=True)\ntime.sleep(4)\nprint('late')", {
      onStdout: (m) => (early ??= m.line.includes('early') ? Date.now() - t0 : undefined),
      timeoutMs: 120_000,
    })
    const done = Date.now() - t0
    assert.equal(stdout(late), 'early\nlate\n')
    assert.ok(early !== undefined && done - early > 2500, `'early' at ${early} ms, the cell ended at ${done} ms`)
  }),
)

test('an exception is execution.error with name, value and traceback', { timeout: 300_000 }, () =>
  withSandbox({}, async (sbx) => {
    const seen = []
    const ex = await sbx.runCode("def boom():\n    raise ValueError('bad value 7')\n\nboom()", { onError: (e) => seen.push(e) })
    assert.equal(ex.error.name, 'ValueError')
    assert.equal(ex.error.value, 'bad value 7')
    assert.match(ex.error.traceback, /boom/)
    assert.deepEqual(seen.map((e) => e.name), ['ValueError'])
    const div = await sbx.runCode("print('before')\n1 / 0")
    assert.equal(stdout(div), 'before\n')
    assert.equal(div.error.name, 'ZeroDivisionError')
    assert.equal((await sbx.runCode('2 * 3')).text, '6')
  }),
)

test('a matplotlib chart comes back as PNG and as chart', { timeout: 400_000 }, () =>
  withSandbox({}, async (sbx) => {
    const code = `
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
`
    const ex = await sbx.runCode(code, { timeoutMs: 180_000 })
    assert.equal(ex.error, undefined)
    const images = ex.results.filter((r) => r.png)
    assert.equal(images.length, 1)
    const r = images[0]
    assert.equal(r.isMainResult, false)
    const png = Buffer.from(r.png, 'base64')
    assert.deepEqual([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])
    const [width, height] = [png.readUInt32BE(16), png.readUInt32BE(20)]
    assert.ok(width >= 200 && width <= 2000 && height >= 150 && height <= 1500 && width > height, `${width}x${height}`)
    assert.equal(r.chart.type, 'line')
    assert.equal(r.chart.title, 'Waves')
    assert.equal(r.chart.x_label, 'Time (s)')
    assert.equal(r.chart.y_unit, 'Hz')
    assert.deepEqual(r.chart.elements.map((e) => e.label), ['sin', 'cos'])
    assert.deepEqual(r.chart.elements.map((e) => e.points.length), [50, 50])
    assert.deepEqual(r.chart.elements[1].points[0], [0, 1])
    assert.ok(r.formats().includes('png'))

    const bar = await sbx.runCode(
      "plt.figure()\nplt.bar(['A', 'B', 'C'], [1, 2, 3], label='Sold')\nplt.title('Bars')\nplt.show()",
      { timeoutMs: 180_000 },
    )
    const chart = bar.results.find((x) => x.chart)?.chart
    assert.equal(chart?.type, 'bar')
    assert.equal(chart.title, 'Bars')
    assert.deepEqual(chart.elements.map((e) => [e.label, e.value, e.group]), [['A', 1, 'Sold'], ['B', 2, 'Sold'], ['C', 3, 'Sold']])
  }),
)

test('a DataFrame comes back as data, display() results are not the main result', { timeout: 300_000 }, () =>
  withSandbox({}, async (sbx) => {
    const ex = await sbx.runCode("import pandas as pd\npd.DataFrame({'a': [1, 2, 3], 'b': ['x', 'y', 'z']})", { timeoutMs: 120_000 })
    assert.equal(ex.error, undefined)
    assert.equal(ex.results.length, 1)
    assert.equal(ex.results[0].isMainResult, true)
    assert.deepEqual(ex.results[0].data, { a: [1, 2, 3], b: ['x', 'y', 'z'] })
    assert.match(ex.results[0].html, /<table/)
    const results = []
    const shown = await sbx.runCode('from IPython.display import display\ndisplay(11)\n22', { onResult: (r) => results.push(r) })
    assert.deepEqual(shown.results.map((r) => [r.text, r.isMainResult]), [['11', false], ['22', true]])
    assert.equal(shown.text, '22')
    assert.deepEqual(results.map((r) => r.text), ['11', '22'])
  }),
)

test('contexts: a cwd, the default ones listed, restart, remove', { timeout: 400_000 }, () =>
  withSandbox({}, async (sbx) => {
    const listed = await sbx.listCodeContexts()
    const langs = listed.map((c) => c.language)
    assert.ok(langs.includes('python') && langs.includes('javascript'), JSON.stringify(listed))
    const ctx = await sbx.createCodeContext({ cwd: '/tmp' })
    assert.ok(ctx.id)
    assert.equal(ctx.language, 'python')
    assert.equal(ctx.cwd, '/tmp')
    assert.ok((await sbx.listCodeContexts()).some((c) => c.id === ctx.id))
    assert.equal((await sbx.runCode('import os\nos.getcwd()', { context: ctx })).text, '/tmp')
    assert.equal((await sbx.runCode('import os\nos.getcwd()')).text, '/home/user')
    await sbx.runCode('only_here = 5', { context: ctx })
    assert.equal((await sbx.runCode('only_here', { context: ctx })).text, '5')
    assert.equal((await sbx.runCode('only_here')).error?.name, 'NameError')
    const js = await sbx.createCodeContext({ cwd: '/tmp', language: 'javascript' })
    assert.equal(js.language, 'javascript')
    const jsCwd = await sbx.runCode('process.cwd()', { context: js })
    assert.equal(jsCwd.text, '/tmp', JSON.stringify(jsCwd))
    await sbx.restartCodeContext(ctx)
    assert.equal((await sbx.runCode('only_here', { context: ctx })).error?.name, 'NameError')
    await sbx.removeCodeContext(ctx.id)
    assert.ok(!(await sbx.listCodeContexts()).some((c) => c.id === ctx.id))
    await assert.rejects(sbx.runCode('1', { context: ctx }), NotFoundError)
    await assert.rejects(sbx.restartCodeContext(ctx), NotFoundError)
  }),
)

test('env vars per call and per sandbox', { timeout: 300_000 }, () =>
  withSandbox({ envs: { FROM_CREATE: 'sandbox-level' } }, async (sbx) => {
    const read = "import os\nprint(os.environ.get('PER_CALL', 'unset'), os.environ.get('FROM_CREATE', 'unset'))"
    assert.equal(stdout(await sbx.runCode(read, { envs: { PER_CALL: 'only-now' } })), 'only-now sandbox-level\n')
    assert.equal(stdout(await sbx.runCode(read)), 'unset sandbox-level\n')
    assert.equal(stdout(await sbx.runCode(read, { envs: { FROM_CREATE: 'overridden' } })), 'unset overridden\n')
    assert.equal(stdout(await sbx.runCode(read)), 'unset sandbox-level\n')
    assert.equal((await sbx.runCode('process.env.PER_CALL', { language: 'javascript', envs: { PER_CALL: 'js-now' } })).text, 'js-now')
    assert.equal((await sbx.runCode('process.env.FROM_CREATE', { language: 'javascript' })).text, 'sandbox-level')
    assert.match(stdout(await sbx.runCode('echo "bash:$PER_CALL"', { language: 'bash', envs: { PER_CALL: 'sh-now' } })), /bash:sh-now/)
  }),
)

test('the execution time-out interrupts the kernel and the context goes on', { timeout: 300_000 }, () =>
  withSandbox({}, async (sbx) => {
    await sbx.runCode("before = 'kept'")
    await assert.rejects(sbx.runCode('while True: pass', { timeoutMs: 3000 }), TimeoutError)
    // Interrupted, not killed: a kernel killed after ignoring the interrupt has no `before`, and
    // a cell never interrupted makes this call time out.
    const ex = await sbx.runCode('before', { timeoutMs: 120_000 })
    assert.equal(ex.text, 'kept')
  }),
)

test('JavaScript, TypeScript and bash cells', { timeout: 300_000 }, () =>
  withSandbox({}, async (sbx) => {
    await sbx.runCode('let counter = 40', { language: 'javascript' })
    assert.equal((await sbx.runCode('counter += 2; counter', { language: 'javascript' })).text, '42')
    const awaited = await sbx.runCode('const v = await new Promise((r) => setTimeout(() => r(7), 100)); v * 6', { language: 'javascript' })
    assert.equal(awaited.error, undefined)
    assert.equal(awaited.text, '42')
    const logs = await sbx.runCode("console.log('from js'); console.error('js err')", { language: 'javascript' })
    assert.equal(stdout(logs), 'from js\n')
    assert.equal(stderr(logs), 'js err\n')
    const thrown = await sbx.runCode("throw new Error('js boom')", { language: 'javascript' })
    assert.ok(thrown.error && `${thrown.error.value}${thrown.error.traceback}`.includes('js boom'))
    const ts = await sbx.runCode('function sub(x: number, y: number): number {\n  return x - y\n}\nsub(1, 2)', { language: 'typescript' })
    assert.equal(ts.error, undefined)
    assert.equal(ts.text, '-1')
    const bash = await sbx.runCode('echo hello-bash; export KEPT=7', { language: 'bash' })
    assert.match(stdout(bash), /hello-bash/)
    assert.match(stdout(await sbx.runCode('echo "kept:$KEPT"', { language: 'bash' })), /kept:7/)
  }),
)

test('an unknown language is an error and the sandbox goes on', { timeout: 300_000 }, () =>
  withSandbox({}, async (sbx) => {
    await assert.rejects(sbx.runCode('1', { language: 'cobol85' }), (e) => e instanceof SandboxError && !(e instanceof TimeoutError))
    assert.equal((await sbx.runCode('1 + 1')).text, '2')
  }),
)

test('a sandbox without public traffic: the SDK sends the traffic token, a bare request is refused', { timeout: 300_000 }, () =>
  withSandbox({ network: { allowPublicTraffic: false } }, async (sbx) => {
    assert.ok(sbx.trafficAccessToken, 'no traffic access token')
    assert.equal((await sbx.runCode('40 + 2')).text, '42')
    const ctx = await sbx.createCodeContext({ cwd: '/tmp' })
    assert.ok((await sbx.listCodeContexts()).some((c) => c.id === ctx.id))
    await sbx.removeCodeContext(ctx)
    const route = { 'E2b-Sandbox-Id': sbx.sandboxId, 'E2b-Sandbox-Port': '49999' }
    assert.equal((await fetch(`${url}/health`, { headers: route })).status, 403)
    assert.equal((await fetch(`${url}/health`, { headers: { ...route, 'E2B-Traffic-Access-Token': sbx.trafficAccessToken } })).status, 200)
  }),
)
