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
  assert.deepEqual(d.blindPeer, { enabled: true, maxBytes: 100_000_000_000, staleMs: 7 * 24 * 3600_000, cacheSize: 32, progressIntervalMs: 1000, announceIntervalMs: 10_000, trustWaitMs: 30_000, trustRegistered: true })
  assert.equal(d.leaseOpenTimeoutMs, 60_000)
  const s = loadBridgeConfig({ ...base, HYPERTUNA_BRIDGE_BLIND_PEER: 'off', HYPERTUNA_BRIDGE_REPLICA_CACHE: '5' }, '/tmp')
  assert.equal(s.blindPeer.enabled, false)
  assert.equal(s.blindPeer.cacheSize, 5)
  assert.equal(loadBridgeConfig({ ...base, HYPERTUNA_BRIDGE_BLIND_PEER_TRUST_REGISTERED: 'off' }, '/tmp').blindPeer.trustRegistered, false)
  assert.equal(loadBridgeConfig({ ...base, HYPERTUNA_BRIDGE_BLIND_PEER_TRUST_WAIT_MS: '0' }, '/tmp').blindPeer.trustWaitMs, 0)
  assert.throws(() => loadBridgeConfig({ ...base, HYPERTUNA_BRIDGE_BLIND_PEER_TRUST_WAIT_MS: '-1' }, '/tmp'), ConfigError)
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

// ---- scoped blind-peer trust (trust.mjs) ----

const { TrustTable } = await import('../src/blind/trust.mjs')
const { BlindPeerError } = await import('../src/blind/errors.mjs')
const { loadBlindModules } = await import('../src/blind/modules.mjs')

function trustTable (dir) {
  const { IdEnc } = loadBlindModules()
  const decodeKey = (value, name) => {
    try {
      const buf = IdEnc.decode(/^[0-9a-fA-F]{64}$/.test(value) ? value.toLowerCase() : value)
      if (buf.length === 32) return buf
    } catch {}
    throw new BlindPeerError('invalid-params', `${name} must be 64-hex or a z-base-32 id`)
  }
  return new TrustTable({ dir, decodeKey })
}

const k = (byte) => Buffer.alloc(32, byte)
const h = (byte) => k(byte).toString('hex')

test('a key trusted for relay A adds A\'s cores and nothing of relay B', () => {
  const dir = fs.mkdtempSync(path.join(fs.realpathSync('/tmp'), 'ht-trust-'))
  const t = trustTable(dir)
  const worker = 0x11
  const relayA = h(0xa1)
  const relayB = h(0xb1)
  t.setRelays([
    { relayKey: relayA, peerKeys: [h(worker)], keys: [relayA, h(0xa2), h(0xa3)] },
    { relayKey: relayB, peerKeys: [h(0x22)], keys: [relayB, h(0xb2)] }
  ])
  assert.equal(t.check(k(worker), k(0x99), k(0xa1)), null, 'referrer = relay A: any core')
  assert.equal(t.check(k(worker), k(0x99), k(0xa2)), null, 'referrer = a declared core of A (a joiner\'s writer)')
  assert.equal(t.check(k(worker), k(0xa3), null), null, 'no referrer, a core A declared')
  assert.equal(t.check(k(worker), k(0x77), null), null, 'no referrer, a core no relay declared (a drive)')
  assert.equal(t.check(k(worker), k(0x99), k(0xb1)), 'referrer-out-of-scope', 'referrer = relay B')
  assert.equal(t.check(k(worker), k(0x99), k(0xb2)), 'referrer-out-of-scope')
  assert.equal(t.check(k(worker), k(0xb2), null), 'core-out-of-scope', 'a core relay B declared')
  assert.equal(t.check(k(0x33), k(0xa3), k(0xa1)), 'untrusted', 'a key no relay trusts')
  assert.equal(t.check(k(0x22), k(0x99), k(0xa1)), 'referrer-out-of-scope', 'B\'s key cannot use A\'s referrer')
  fs.rmSync(dir, { recursive: true, force: true })
})

test('trust is withdrawn per relay, per key, and by a reconcile that replaces everything', () => {
  const dir = fs.mkdtempSync(path.join(fs.realpathSync('/tmp'), 'ht-trust-'))
  const t = trustTable(dir)
  const relayA = h(0xa1)
  const relayB = h(0xb1)
  t.trustForRelay(h(0x11), relayA, [relayA])
  t.trustForRelay(h(0x11), relayB, [relayB])
  assert.equal(t.check(k(0x11), k(0x99), k(0xb1)), null)
  t.untrust({ peerKey: h(0x11), relayKey: relayB })
  assert.equal(t.check(k(0x11), k(0x99), k(0xb1)), 'referrer-out-of-scope')
  assert.equal(t.check(k(0x11), k(0x99), k(0xa1)), null, 'A is untouched')
  t.untrust({ relayKey: relayA })
  assert.equal(t.check(k(0x11), k(0x99), k(0xa1)), 'untrusted')
  t.trustForRelay(h(0x11), relayA, [relayA])
  t.trustPeer(h(0x44))
  t.setRelays([{ relayKey: relayB, peerKeys: [h(0x22)], keys: [relayB] }], { replaceAll: true })
  assert.equal(t.check(k(0x11), k(0x99), k(0xa1)), 'untrusted', 'the reconcile dropped A')
  assert.equal(t.check(k(0x22), k(0x99), k(0xb1)), null)
  assert.equal(t.check(k(0x44), k(0x99), k(0xb1)), null, 'operator (unscoped) trust is not Python\'s to reconcile')
  t.setRelays([{ relayKey: relayB, peerKeys: [], keys: [relayB] }])
  assert.equal(t.check(k(0x22), k(0x99), k(0xb1)), 'untrusted', 'a relay with no trusted key is dropped')
  t.untrust({ peerKey: h(0x44) })
  assert.equal(t.check(k(0x44), k(0x99), k(0xb1)), 'untrusted')
  fs.rmSync(dir, { recursive: true, force: true })
})

test('trust survives a restart (0600 file) and takes z-base-32 or hex keys', () => {
  const { IdEnc } = loadBlindModules()
  const dir = fs.mkdtempSync(path.join(fs.realpathSync('/tmp'), 'ht-trust-'))
  const t = trustTable(dir)
  const relayA = h(0xa1)
  const z = (byte) => IdEnc.encode(k(byte))
  const r = t.trustForRelay(z(0x11), relayA, [z(0xa1), h(0xa2).toUpperCase()])
  assert.equal(r.peerKey, h(0x11))
  assert.equal(r.keys, 2)
  t.trustPeer(z(0x44))
  assert.equal(fs.statSync(path.join(dir, 'trusted-relays.json')).mode & 0o777, 0o600)
  const again = trustTable(dir)
  again.load()
  assert.equal(again.check(k(0x11), k(0x99), k(0xa2)), null)
  assert.equal(again.check(k(0x11), k(0x99), k(0xb1)), 'referrer-out-of-scope')
  assert.equal(again.check(k(0x44), k(0x99), null), null)
  const summary = again.summary()
  assert.deepEqual(summary.trustedPeers.map((p) => [p.key, p.unscoped, p.relays]).sort(), [[h(0x11), false, [relayA]], [h(0x44), true, []]])
  assert.throws(() => again.trustForRelay('not-a-key', relayA), (e) => e.code === 'invalid-params')
  assert.throws(() => again.trustForRelay(h(0x11), ''), (e) => e.code === 'invalid-params')
  assert.throws(() => again.setRelays([{ relayKey: relayA, peerKeys: ['zz'] }]), (e) => e.code === 'invalid-params')
  assert.throws(() => again.untrust({}), (e) => e.code === 'invalid-params')
  fs.rmSync(dir, { recursive: true, force: true })
})

test('an older unscoped trust file is not carried over (Python re-sends scoped trust)', () => {
  const dir = fs.mkdtempSync(path.join(fs.realpathSync('/tmp'), 'ht-trust-'))
  fs.writeFileSync(path.join(dir, 'trusted-peers.json'), JSON.stringify({ peers: [{ key: h(0x11), trustedSince: 1 }] }))
  const t = trustTable(dir)
  t.load()
  assert.equal(t.check(k(0x11), k(0x99), null), 'untrusted')
  fs.rmSync(dir, { recursive: true, force: true })
})
