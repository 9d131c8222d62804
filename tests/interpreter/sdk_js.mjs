// The official JS SDK (`@e2b/code-interpreter` 2.8.0, from tests/js/node_modules) against a
// running ember-interpreter: `node sdk_js.mjs URL TOKEN CWD`. Prints "ok" or throws.
import assert from 'node:assert/strict'
import { join, dirname } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'

const [url, token, cwd] = process.argv.slice(2)
const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..')
const { Sandbox, NotFoundError, SandboxError } = await import(
  pathToFileURL(join(root, 'tests/js/node_modules/@e2b/code-interpreter/dist/index.mjs')).href
)
const sbx = new Sandbox({ sandboxId: 'test', envdAccessToken: token, sandboxUrl: url, apiKey: 'e2b_' + '0'.repeat(40) })

const out = []
let ex = await sbx.runCode('x = 6\nprint("py")\nx * 7', { onStdout: (m) => out.push(m.line) })
assert.equal(ex.text, '42')
assert.deepEqual(ex.logs.stdout, ['py\n'])
assert.deepEqual(out, ['py\n'])
ex = await sbx.runCode('console.log("js"); await Promise.resolve(5)', { language: 'js' })
assert.equal(ex.text, '5')
assert.deepEqual(ex.logs.stdout, ['js\n'])
ex = await sbx.runCode('const t: number = 3; t * 3', { language: 'ts' })
assert.equal(ex.text, '9')
ex = await sbx.runCode('1/0')
assert.equal(ex.error.name, 'ZeroDivisionError')
ex = await sbx.runCode(
  "from IPython.display import display\ndisplay({'application/x-custom': 'c', 'text/plain': 'p'}, raw=True)"
)
assert.equal(ex.results[0].isMainResult, false)
assert.equal(ex.results[0].extra['application/x-custom'], 'c')
ex = await sbx.runCode('import os; os.environ["JSV"]', { envs: { JSV: 'v' } })
assert.equal(ex.text, 'v')
const ctx = await sbx.createCodeContext({ cwd, language: 'python' })
assert.equal(ctx.cwd, cwd)
assert.ok((await sbx.listCodeContexts()).some((c) => c.id === ctx.id))
assert.equal((await sbx.runCode('import os; os.getcwd()', { context: ctx })).text, cwd)
await sbx.restartCodeContext(ctx)
await sbx.removeCodeContext(ctx)
await assert.rejects(sbx.runCode('1', { context: ctx }), NotFoundError)
await assert.rejects(sbx.runCode('1', { language: 'cobol' }), SandboxError)
// The execution time-out aborts the request; the server interrupts the cell.
const loop = await sbx.createCodeContext({})
await assert.rejects(sbx.runCode('while True: pass', { context: loop, timeoutMs: 1500 }))
assert.equal((await sbx.runCode('"alive"', { context: loop })).text, 'alive')
console.log('ok')
