// E2B behaviour parity of the guest agent (envd) on the JS SDK's own code paths: multi-file
// writes (one multipart part per file, its filename the path), an empty write, a PTY reconnected
// with `pty.connect`, and CORS answers to a browser's preflight (sent from node with fetch).
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { startDaemon, stopDaemon } from './daemon.mjs'

let daemon, Sandbox, sbx

before(async () => {
  daemon = await startDaemon('parity-envd', ['--interpreter-pool', '0'])
  ;({ Sandbox } = await import('e2b'))
  sbx = await Sandbox.create()
})

after(async () => {
  await sbx?.kill().catch(() => {})
  await stopDaemon(daemon)
})

test('a multi-file write puts each file at its path and returns them all', async () => {
  const infos = await sbx.files.write([
    { path: '/home/user/multi/a.txt', data: 'one' },
    { path: 'multi/sub/b.txt', data: new Blob(['two']) },
    { path: '/tmp/multi-c.bin', data: new Uint8Array([1, 2, 3]).buffer },
  ])
  assert.deepEqual(
    infos.map((i) => [i.name, i.type, i.path]),
    [
      ['a.txt', 'file', '/home/user/multi/a.txt'],
      ['b.txt', 'file', '/home/user/multi/sub/b.txt'],
      ['multi-c.bin', 'file', '/tmp/multi-c.bin'],
    ],
  )
  assert.equal(await sbx.files.read('/home/user/multi/a.txt'), 'one')
  assert.equal(await sbx.files.read('/home/user/multi/sub/b.txt'), 'two')
  assert.deepEqual([...(await sbx.files.read('/tmp/multi-c.bin', { format: 'bytes' }))], [1, 2, 3])
  const owner = (await sbx.commands.run('stat -c %U /home/user/multi/sub/b.txt /tmp/multi-c.bin')).stdout
  assert.equal(owner, 'user\nuser\n')
  // As the SDK expects: an empty list writes nothing and answers an empty list.
  assert.deepEqual(await sbx.files.write([]), [])
  // A single entry in a list is still a list.
  const one = await sbx.files.write([{ path: '/home/user/multi/one.txt', data: '1' }])
  assert.deepEqual(one.map((i) => i.path), ['/home/user/multi/one.txt'])
})

test('a write returns the metadata it stored', async () => {
  const info = await sbx.files.write('/home/user/meta.txt', 'm', { metadata: { owner: 'alice' } })
  assert.equal(info.path, '/home/user/meta.txt')
  assert.deepEqual(info.metadata, { owner: 'alice' })
})

test('a PTY reconnected with pty.connect is the same shell and its output reaches the new handle', async () => {
  const enc = new TextEncoder()
  let first = ''
  const pty = await sbx.pty.create({ cols: 80, rows: 24, onData: (d) => (first += new TextDecoder().decode(d)) })
  await sbx.pty.sendInput(pty.pid, enc.encode('export PARITY_X=1; echo set-$PARITY_X\n'))
  const until = async (get, re) => {
    const deadline = Date.now() + 60_000
    while (!re.test(get())) {
      assert.ok(Date.now() < deadline, `no ${re} in ${JSON.stringify(get())}`)
      await new Promise((r) => setTimeout(r, 100))
    }
  }
  await until(() => first, /set-1/)
  await pty.disconnect()
  let second = ''
  const again = await sbx.pty.connect(pty.pid, { onData: (d) => (second += new TextDecoder().decode(d)) })
  assert.equal(again.pid, pty.pid)
  await sbx.pty.sendInput(pty.pid, enc.encode('echo "again-$PARITY_X-$$"\n'))
  await until(() => second, /again-1-\d+/)
  const shellPid = Number(second.match(/again-1-(\d+)/)[1])
  assert.equal(shellPid, pty.pid)
  await sbx.pty.sendInput(pty.pid, enc.encode('exit\n'))
  const end = await again.wait()
  assert.equal(end.exitCode, 0)
})

test('envd answers a CORS preflight without a token and marks its answers for browsers', async () => {
  const routing = { 'E2b-Sandbox-Id': sbx.sandboxId, 'E2b-Sandbox-Port': '49983' }
  const requested = 'authorization, connect-protocol-version, content-type, x-access-token, e2b-sandbox-id, e2b-sandbox-port'
  const pre = await fetch(`${daemon.url}/filesystem.Filesystem/Stat`, {
    method: 'OPTIONS',
    headers: {
      ...routing,
      Origin: 'http://example.test',
      'Access-Control-Request-Method': 'POST',
      'Access-Control-Request-Headers': requested,
    },
  })
  assert.ok(pre.status === 200 || pre.status === 204, `preflight: ${pre.status}`)
  assert.equal(pre.headers.get('access-control-allow-origin'), '*')
  assert.match(pre.headers.get('access-control-allow-methods'), /POST/)
  const allowed = pre.headers.get('access-control-allow-headers').toLowerCase()
  for (const h of requested.split(', ')) assert.ok(allowed === '*' || allowed.includes(h), `${h} not in ${allowed}`)
  assert.ok(Number(pre.headers.get('access-control-max-age')) > 0)
  // A refused call still carries the CORS headers, so a browser can read the refusal.
  const refused = await fetch(`${daemon.url}/files?path=/etc/hostname`, { headers: { ...routing, Origin: 'http://example.test' } })
  assert.equal(refused.status, 401)
  assert.equal(refused.headers.get('access-control-allow-origin'), '*')
  const ok = await fetch(`${daemon.url}/files?path=/home/user/meta.txt`, {
    headers: { ...routing, Origin: 'http://example.test', 'X-Access-Token': sbx.envdAccessToken },
  })
  assert.equal(ok.status, 200)
  assert.equal(ok.headers.get('access-control-allow-origin'), '*')
  assert.ok(ok.headers.get('access-control-expose-headers'))
})
