// A real `ember serve` for a JS test file: started on a free port with a temporary data
// directory and a fresh API key, the SDK pointed at it (E2B_API_URL, E2B_SANDBOX_URL,
// E2B_API_KEY); stopped with SIGTERM, checking that no sandbox directory is left behind.
import crypto from 'node:crypto'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync, readdirSync, existsSync, chmodSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'

export const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..')
export const ember = process.env.EMBER_BIN ?? join(root, 'target', 'release', 'ember')

const freePort = () =>
  new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address()
      s.close(() => resolve(port))
    })
  })

/** Starts `ember serve` with `args` after its own; resolves once /health answers. */
export async function startDaemon(name, args) {
  const dataDir = mkdtempSync(join(tmpdir(), `ember-js-${name}-`))
  chmodSync(dataDir, 0o755) // the unprivileged QEMU user must reach the sandboxes' disks
  const port = await freePort()
  const url = `http://127.0.0.1:${port}`
  const key = 'e2b_' + crypto.randomBytes(20).toString('hex')
  const proc = spawn(ember, ['serve', '--listen', `127.0.0.1:${port}`, '--data-dir', dataDir, '--destroy-on-exit', ...args], {
    env: { ...process.env, EMBER_API_KEY: key },
    stdio: 'ignore',
  })
  const deadline = Date.now() + 600_000
  for (;;) {
    try {
      if ((await fetch(`${url}/health`)).status === 204) break
    } catch {}
    assert.ok(Date.now() < deadline, 'ember serve did not come up')
    assert.equal(proc.exitCode, null, 'ember serve exited')
    await new Promise((r) => setTimeout(r, 100))
  }
  Object.assign(process.env, { E2B_API_URL: url, E2B_SANDBOX_URL: url, E2B_API_KEY: key })
  return { proc, dataDir, url, key }
}

/** Stops the daemon and checks it left no sandbox directory. */
export async function stopDaemon(daemon) {
  if (!daemon) return
  if (daemon.proc.exitCode === null) {
    daemon.proc.kill('SIGTERM')
    await new Promise((r) => daemon.proc.once('exit', r))
  }
  const sandboxes = join(daemon.dataDir, 'sandboxes')
  const left = existsSync(sandboxes) ? readdirSync(sandboxes) : []
  rmSync(daemon.dataDir, { recursive: true, force: true })
  assert.deepEqual(left, [], 'sandboxes left after the daemon stopped')
}
