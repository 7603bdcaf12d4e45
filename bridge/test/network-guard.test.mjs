import test from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import { ROOT } from './helpers/procs.mjs'

function * walk (dir) {
  for (const name of fs.readdirSync(dir)) {
    if (name === 'node_modules' || name === 'var') continue
    const full = path.join(dir, name)
    if (fs.statSync(full).isDirectory()) yield * walk(full)
    else if (/\.(mjs|js|cjs)$/.test(name)) yield full
  }
}

test('every Hyperswarm/HyperDHT constructor names its bootstrap or dht on the same line', () => {
  const offenders = []
  let seen = 0
  for (const file of walk(ROOT)) {
    const lines = fs.readFileSync(file, 'utf8').split('\n')
    lines.forEach((line, i) => {
      if (!/new (Hyperswarm|HyperDHT)\(/.test(line)) return
      if (file.endsWith('network-guard.test.mjs')) return
      seen++
      if (!/bootstrap|dht:/.test(line)) offenders.push(`${path.relative(ROOT, file)}:${i + 1}: ${line.trim()}`)
    })
  }
  assert.ok(seen >= 2, 'the scan found the constructors')
  assert.deepEqual(offenders, [])
})

test('createDht refuses to run without an explicit bootstrap list', async () => {
  const { createDht, parseBootstrap, bindHostFor } = await import('../src/swarm/bootstrap.mjs')
  assert.throws(() => createDht({ bootstrap: undefined, host: '127.0.0.1' }), /explicit/)
  assert.throws(() => createDht({ bootstrap: [], host: '127.0.0.1' }), /explicit/)
  assert.equal(parseBootstrap('').mode, 'local')
  assert.equal(parseBootstrap(undefined).mode, 'local')
  assert.deepEqual(parseBootstrap('127.0.0.1:1,127.0.0.1:2').nodes, [{ host: '127.0.0.1', port: 1 }, { host: '127.0.0.1', port: 2 }])
  assert.equal(bindHostFor(parseBootstrap('127.0.0.1:5'), null), '127.0.0.1')
  assert.equal(bindHostFor(parseBootstrap('local'), null), '127.0.0.1')
  assert.throws(() => parseBootstrap('nonsense'), /host:port/)
})
