// E2B's lifecycle through the official JS SDK (pinned in package.json) against a real
// `ember serve`: a time-out pauses instead of killing when `lifecycle.onTimeout` says so and
// traffic resumes it with `autoResume`; `keepMemory: false` pauses only the filesystem; a
// command's `wait()` ends at once when its sandbox is killed; `fork` makes running copies.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { startDaemon, stopDaemon } from './daemon.mjs'

let daemon, Sandbox

before(async () => {
  daemon = await startDaemon('lifecycle', ['--interpreter-pool', '0'])
  ;({ Sandbox } = await import('e2b'))
})

after(() => stopDaemon(daemon))

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

async function waitForState(id, state) {
  const deadline = Date.now() + 60_000
  while (Date.now() < deadline) {
    if ((await Sandbox.getInfo(id)).state === state) return
    await sleep(500)
  }
  assert.fail(`${id} did not become ${state}`)
}

test('a time-out pauses, and traffic resumes the same boot', async () => {
  const sbx = await Sandbox.create({ timeoutMs: 6000, lifecycle: { onTimeout: 'pause', autoResume: true } })
  try {
    assert.deepEqual((await sbx.getInfo()).lifecycle, { onTimeout: 'pause', autoResume: true })
    const boot = (await sbx.commands.run('cat /proc/sys/kernel/random/boot_id')).stdout
    await sbx.files.write('/home/user/kept.txt', 'kept')
    await waitForState(sbx.sandboxId, 'paused')
    assert.equal(await sbx.files.read('/home/user/kept.txt', { requestTimeoutMs: 120_000 }), 'kept')
    assert.equal((await Sandbox.getInfo(sbx.sandboxId)).state, 'running')
    await sbx.setTimeout(120_000)
    assert.equal((await sbx.commands.run('cat /proc/sys/kernel/random/boot_id')).stdout, boot)
  } finally {
    await sbx.kill()
  }
})

test('keepMemory false pauses the filesystem only; connect boots from it', async () => {
  const sbx = await Sandbox.create({ timeoutMs: 6000, lifecycle: { onTimeout: { action: 'pause', keepMemory: false } } })
  try {
    const boot = (await sbx.commands.run('cat /proc/sys/kernel/random/boot_id')).stdout
    await sbx.files.write('/home/user/kept.txt', 'on disk')
    await waitForState(sbx.sandboxId, 'paused')
    const resumed = await Sandbox.connect(sbx.sandboxId, { timeoutMs: 120_000, requestTimeoutMs: 300_000 })
    assert.equal(await resumed.files.read('/home/user/kept.txt'), 'on disk')
    assert.notEqual((await resumed.commands.run('cat /proc/sys/kernel/random/boot_id')).stdout, boot)
  } finally {
    await sbx.kill()
  }
})

test('a kill ends a waiting command at once', async () => {
  const sbx = await Sandbox.create()
  const handle = await sbx.commands.run('sleep 600', { background: true, timeoutMs: 0 })
  const waited = handle.wait().then(
    () => 'returned',
    (e) => e,
  )
  await sleep(1000)
  const t0 = Date.now()
  await sbx.kill()
  const outcome = await Promise.race([waited, sleep(30_000).then(() => 'still waiting')])
  assert.ok(outcome instanceof Error, `wait() gave ${outcome}`)
  assert.ok(Date.now() - t0 < 30_000)
})

test('fork makes running copies', async () => {
  const src = await Sandbox.create()
  try {
    await src.files.write('/home/user/before.txt', 'before')
    const forks = await src.fork({ count: 2 })
    assert.equal(forks.length, 2)
    for (const f of forks) {
      assert.ok(f instanceof Sandbox, String(f))
      assert.notEqual(f.sandboxId, src.sandboxId)
      assert.equal(await f.files.read('/home/user/before.txt'), 'before')
      assert.equal((await f.commands.run('echo $E2B_SANDBOX_ID')).stdout, `${f.sandboxId}\n`)
      await f.kill()
    }
    assert.equal((await src.commands.run('echo ok')).stdout, 'ok\n')
  } finally {
    await src.kill()
  }
})
