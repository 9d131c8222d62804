// The official E2B JS SDK (pinned in package.json) drives a real `ember serve` started here:
// create with metadata and env vars, commands, PTY, files, listing, time-outs, kill.
import crypto from 'node:crypto'
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { spawn, execFileSync } from 'node:child_process'
import { mkdtempSync, rmSync, readdirSync, existsSync, chmodSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..')
const ember = process.env.EMBER_BIN ?? join(root, 'target', 'release', 'ember')
const key = 'e2b_' + crypto.randomBytes(20).toString('hex')
let daemon, dataDir

const freePort = () =>
  new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address()
      s.close(() => resolve(port))
    })
  })

let Sandbox, CommandExitError

before(async () => {
  dataDir = mkdtempSync(join(tmpdir(), 'ember-js-test-'))
  chmodSync(dataDir, 0o755) // the unprivileged QEMU user must reach the sandboxes' disks
  const port = await freePort()
  const url = `http://127.0.0.1:${port}`
  daemon = spawn(ember, ['serve', '--listen', `127.0.0.1:${port}`, '--data-dir', dataDir, '--destroy-on-exit', '--interpreter-pool', '0'], {
    env: { ...process.env, EMBER_API_KEY: key },
    stdio: 'ignore',
  })
  const deadline = Date.now() + 600_000
  for (;;) {
    try {
      if ((await fetch(`${url}/health`)).status === 204) break
    } catch {}
    assert.ok(Date.now() < deadline, 'ember serve did not come up')
    assert.equal(daemon.exitCode, null, 'ember serve exited')
    await new Promise((r) => setTimeout(r, 100))
  }
  Object.assign(process.env, { E2B_API_URL: url, E2B_SANDBOX_URL: url, E2B_API_KEY: key })
  ;({ Sandbox, CommandExitError } = await import('e2b'))
})

after(async () => {
  daemon.kill('SIGTERM')
  await new Promise((r) => daemon.once('exit', r))
  const left = existsSync(join(dataDir, 'sandboxes')) ? readdirSync(join(dataDir, 'sandboxes')) : []
  rmSync(dataDir, { recursive: true, force: true })
  assert.deepEqual(left, [], 'sandboxes left after the daemon stopped')
})

test('create with metadata and env vars, run commands', async () => {
  const sbx = await Sandbox.create({ metadata: { lang: 'js' }, envs: { FROM_JS: 'hello' } })
  try {
    const r = await sbx.commands.run('echo $FROM_JS; id -un')
    assert.equal(r.stdout, 'hello\nuser\n')
    assert.equal(r.exitCode, 0)
    await assert.rejects(sbx.commands.run('echo bad >&2; exit 5'), (e) => e instanceof CommandExitError && e.exitCode === 5 && e.stderr === 'bad\n')
    const bg = await sbx.commands.run('sleep 120', { background: true })
    assert.ok((await sbx.commands.list()).some((p) => p.pid === bg.pid))
    assert.equal(await bg.kill(), true)
    const info = await sbx.getInfo()
    assert.deepEqual(info.metadata, { lang: 'js' })
  } finally {
    await sbx.kill()
  }
})

test('files and PTY', async () => {
  const sbx = await Sandbox.create()
  try {
    await sbx.files.write('/home/user/js/a.txt', 'from js')
    assert.equal(await sbx.files.read('/home/user/js/a.txt'), 'from js')
    assert.equal(await sbx.files.exists('/home/user/js/a.txt'), true)
    assert.equal(await sbx.files.makeDir('/home/user/js/sub'), true)
    assert.deepEqual((await sbx.files.list('/home/user/js')).map((e) => e.name).sort(), ['a.txt', 'sub'])
    await sbx.files.rename('/home/user/js/a.txt', '/home/user/js/sub/b.txt')
    await sbx.files.remove('/home/user/js/sub')
    assert.equal(await sbx.files.exists('/home/user/js/sub'), false)
    let out = ''
    const pty = await sbx.pty.create({ cols: 70, rows: 20, onData: (d) => (out += new TextDecoder().decode(d)) })
    await sbx.pty.sendInput(pty.pid, new TextEncoder().encode('stty size; echo js-$((3*3)); exit\n'))
    await pty.wait()
    assert.match(out, /20 70/)
    assert.match(out, /js-9/)
  } finally {
    await sbx.kill()
  }
})

test('list with a metadata filter, set timeout, kill', async () => {
  const sbx = await Sandbox.create({ metadata: { jsList: 'yes' } })
  const found = await Sandbox.list({ query: { metadata: { jsList: 'yes' } } }).nextItems()
  assert.deepEqual(found.map((s) => s.sandboxId), [sbx.sandboxId])
  await sbx.setTimeout(2000)
  await new Promise((r) => setTimeout(r, 5000))
  assert.equal(await sbx.isRunning(), false)
  assert.equal(await Sandbox.kill(sbx.sandboxId), false)
})
