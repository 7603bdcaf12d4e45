import test from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import path from 'node:path'
import c from 'compact-encoding'
import { LruCache } from '../src/blind/lru.mjs'
import { decodeViewValue } from '../src/blind/blind-peer.mjs'
import { loadBridgeConfig, ConfigError } from '../src/config.mjs'
import { ROOT } from './helpers/procs.mjs'

test('the replica LRU evicts the least recently accessed entry and closes it', async () => {
  const closed = []
  const lru = new LruCache({ max: 2, onevict: (v, k) => { closed.push(k) } })
  lru.set('a', { id: 'a' })
  lru.set('b', { id: 'b' })
  assert.equal(lru.get('a').id, 'a') // a is now the most recently accessed
  lru.set('c', { id: 'c' }) // evicts b, not a (which was inserted first)
  await new Promise((resolve) => setImmediate(resolve))
  assert.deepEqual(closed, ['b'])
  assert.deepEqual(lru.keys(), ['a', 'c'])
  assert.equal(lru.get('b'), undefined)
  assert.deepEqual(lru.info(), { size: 2, max: 2, hits: 1, misses: 1, evictions: 1, closeErrors: 0 })
  assert.equal(await lru.delete('a'), true)
  assert.deepEqual(closed, ['b', 'a'])
})

test('a failing close is counted, not thrown at the caller that evicted', async () => {
  const lru = new LruCache({ max: 1, onevict: () => { throw new Error('close failed') } })
  lru.set('a', 1)
  lru.set('b', 2)
  await new Promise((resolve) => setImmediate(resolve))
  assert.equal(lru.info().closeErrors, 1)
  assert.throws(() => new LruCache({ max: 0, onevict: () => {} }), /positive/)
})

test('view values decode with and without the c.any tag', () => {
  const json = JSON.stringify({ id: 'ab'.repeat(32), content: 'x'.repeat(300) })
  assert.equal(decodeViewValue(c, c.encode(c.any, json)), json, 'tagged, with a 3-byte length prefix')
  assert.equal(decodeViewValue(c, c.encode(c.any, 'short')), 'short')
  assert.equal(decodeViewValue(c, Buffer.from(json)), json, 'untagged UTF-8 as older writers stored it')
  assert.equal(decodeViewValue(c, null), null)
})

test('blind-peer and lease settings come from the environment', () => {
  const base = { HYPERTUNA_BRIDGE_SOCKET: '/tmp/x.sock' }
  const d = loadBridgeConfig(base, '/tmp')
  assert.deepEqual(d.blindPeer, { enabled: true, maxBytes: 100_000_000_000, staleMs: 7 * 24 * 3600_000, cacheSize: 32, progressIntervalMs: 1000, trustRegistered: true })
  assert.equal(d.leaseOpenTimeoutMs, 60_000)
  const s = loadBridgeConfig({ ...base, HYPERTUNA_BRIDGE_BLIND_PEER: 'off', HYPERTUNA_BRIDGE_REPLICA_CACHE: '5' }, '/tmp')
  assert.equal(s.blindPeer.enabled, false)
  assert.equal(s.blindPeer.cacheSize, 5)
  assert.equal(loadBridgeConfig({ ...base, HYPERTUNA_BRIDGE_BLIND_PEER_TRUST_REGISTERED: 'off' }, '/tmp').blindPeer.trustRegistered, false)
  assert.throws(() => loadBridgeConfig({ ...base, HYPERTUNA_BRIDGE_REPLICA_CACHE: '0' }, '/tmp'), ConfigError)
  assert.throws(() => loadBridgeConfig({ ...base, HYPERTUNA_BRIDGE_BLIND_PEER: 'maybe' }, '/tmp'), ConfigError)
})

test('the blind-peer tree is pinned by its own lockfile and installed by the postinstall', () => {
  const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8'))
  assert.match(pkg.scripts.postinstall, /npm ci --prefix blind/)
  const blind = JSON.parse(fs.readFileSync(path.join(ROOT, 'blind', 'package.json'), 'utf8'))
  assert.equal(blind.dependencies['blind-peer'], '3.8.1')
  assert.equal(blind.overrides['hypercore-storage'], '3.3.1')
  const lock = JSON.parse(fs.readFileSync(path.join(ROOT, 'blind', 'package-lock.json'), 'utf8'))
  assert.equal(lock.packages['node_modules/blind-peer'].version, '3.8.1')
  assert.equal(lock.packages['node_modules/corestore'].version, '7.12.5')
})
