// The official E2B JS SDK's `Template` builder (pinned in package.json) against a real
// `ember serve` started here: a template with COPY, RUN, ENV, WORKDIR, USER and a start command
// built in a sandbox, sandboxes made from it (files, defaults, the server up), a rebuild from the
// layer cache, a failing RUN as a BuildError with its output, Template.exists.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtempSync, writeFileSync, mkdirSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { startDaemon, stopDaemon } from './daemon.mjs'

const BUILD_MS = 900_000
let daemon, context, e2b

before(async () => {
  daemon = await startDaemon('templates', ['--pool', '0', '--interpreter-pool', '0'])
  context = mkdtempSync(join(tmpdir(), 'ember-js-template-context-'))
  mkdirSync(join(context, 'site'))
  writeFileSync(join(context, 'site', 'index.html'), 'served from the template\n')
  e2b = await import('e2b')
})

after(async () => {
  rmSync(context, { recursive: true, force: true })
  await stopDaemon(daemon)
})

const build = async (template, name, opts = {}) => {
  const logs = []
  await e2b.Template.build(template, name, { onBuildLogs: (e) => logs.push(e.message), requestTimeoutMs: BUILD_MS, ...opts })
  return logs
}

test('a template built with the JS SDK gives its sandboxes files, defaults and a running server', { timeout: BUILD_MS * 3 }, async () => {
  const { Template, Sandbox, waitForPort } = e2b
  const template = Template({ fileContextPath: context })
    .fromBaseImage()
    .copy('site', '/srv/site/')
    .runCmd('echo "built by $(whoami)" > /srv/built.txt', { user: 'root' })
    .setEnvs({ JS_TEMPLATE: 'yes' })
    .setWorkdir('/srv/site')
    .setUser('root')
    .setStartCmd('python3 -m http.server 8080 --directory /srv/site', waitForPort(8080))
  const logs = await build(template, 'js-web')
  assert.ok(logs.some((m) => m.startsWith('[2/')), logs.join('\n'))
  assert.equal(await Template.exists('js-web'), true)
  assert.equal(await Template.exists('js-missing'), false)
  const sbx = await Sandbox.create('js-web')
  try {
    const r = await sbx.commands.run('whoami; pwd; echo $JS_TEMPLATE; cat /srv/built.txt; curl -s localhost:8080/index.html')
    assert.deepEqual(r.stdout.split('\n').filter(Boolean), ['root', '/srv/site', 'yes', 'built by root', 'served from the template'])
  } finally {
    await sbx.kill()
  }
  const again = await build(template, 'js-web')
  assert.ok(again.some((m) => m.startsWith('CACHED [1/')), again.join('\n'))
  assert.ok(!again.some((m) => /^\[\d+\//.test(m)), `a step ran again:\n${again.join('\n')}`)
})

test('a failing RUN is a BuildError with its output', { timeout: BUILD_MS }, async () => {
  const { Template, BuildError } = e2b
  const logs = []
  await assert.rejects(
    e2b.Template.build(Template().fromBaseImage().runCmd('echo js-boom; exit 7'), 'js-failing', {
      onBuildLogs: (e) => logs.push(e.message),
      requestTimeoutMs: BUILD_MS,
    }),
    (e) => e instanceof BuildError && /step 1/.test(e.message) && /7/.test(e.message),
  )
  assert.ok(logs.includes('js-boom'), logs.join('\n'))
})
