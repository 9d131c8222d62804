// The official E2B JS SDK (pinned in package.json) drives a real `ember serve` started here:
// create with metadata and env vars, commands, PTY, files, listing, time-outs, kill.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { startDaemon, stopDaemon } from './daemon.mjs'

let daemon, Sandbox, CommandExitError

before(async () => {
  daemon = await startDaemon('serve', ['--interpreter-pool', '0'])
  ;({ Sandbox, CommandExitError } = await import('e2b'))
})

after(() => stopDaemon(daemon))

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
