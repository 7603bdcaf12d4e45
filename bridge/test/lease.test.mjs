import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { spawnReady, stopProcess, waitFor } from './helpers/procs.mjs'
import { stopStack } from './helpers/bridge-stack.mjs'
import { TestRpcClient, ndjson } from './helpers/rpc-client.mjs'
import { startFakeGateway } from './helpers/fake-gateway.mjs'
import crypto from 'hypercore-crypto'
import { signEvent, randomSecretKeyHex } from '../src/worker/nostr.mjs'

const SECRET = 'lease-test-secret'


describe('leased writes: the bridge appends as the gateway writer while the worker is offline', { timeout: 170_000 }, () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ht-lease-'))
  const socketPath = path.join(dir, 'bridge.sock')
  const swarmFile = path.join(dir, 'swarm.json')
  const writerFile = path.join(dir, 'gateway-writer.json')
  const sk = randomSecretKeyHex()
  let bridge, worker, gateway, rpc, ready, writer, leased
  const workerArgs = () => [
    '--bootstrap-file', swarmFile, '--storage', path.join(dir, 'worker'), '--name', 'leased',
    '--gateway-url', gateway.url, '--secret', SECRET, '--blind-peer', 'gateway',
    '--gateway-writer-out', writerFile, '--wakeup-interval-ms', '500'
  ]

  const caughtUp = (coreKey) => rpc.waitEvent((f) => f.event === 'mirror.progress' && f.data.coreKey === coreKey &&
    f.data.remoteLength > 0 && f.data.contiguousLength >= f.data.remoteLength, 40_000)

  before(async () => {
    gateway = await startFakeGateway(SECRET)
    bridge = spawnReady('src/main.mjs', [], {
      marker: 'HYPERTUNA_BRIDGE_READY',
      env: {
        HYPERTUNA_BRIDGE_SOCKET: socketPath,
        HYPERTUNA_SWARM_BOOTSTRAP: 'local',
        HYPERTUNA_SWARM_BOOTSTRAP_FILE: swarmFile,
        HYPERTUNA_BRIDGE_STORAGE: path.join(dir, 'bridge'),
        HYPERTUNA_BRIDGE_MIRROR_PROGRESS_MS: '250',
        HYPERTUNA_BRIDGE_LOG_LEVEL: 'debug'
      }
    })
    await bridge.ready
    rpc = await TestRpcClient.connect(socketPath)
    await rpc.call('hello', { protocol: 1, client: 'lease-test', subscribe: ['mirror.*', 'peer.*', 'lease.*'] })
    worker = spawnReady('src/worker/main.mjs', workerArgs(), { marker: 'HYPERTUNA_WORKER_READY' })
    ready = await worker.ready
    await rpc.call('blindPeer.trust', { peerKey: ready.swarmPublicKey })
  })

  after(() => stopStack({ rpc, worker, bridge, gateway, dir }))

  it('the worker creates a gateway writer and writes its key pair to a 0600 file', async () => {
    const st = fs.statSync(writerFile)
    assert.equal(st.mode & 0o777, 0o600)
    writer = JSON.parse(fs.readFileSync(writerFile, 'utf8'))
    assert.equal(writer.relayKey, ready.relayKey)
    assert.match(writer.writerKey, /^[0-9a-f]{64}$/)
    assert.equal(Buffer.from(writer.secretKey, 'base64').length, 64)
    assert.equal(ready.gatewayWriterKey, writer.writerKey)
  })

  it('mirrors the relay, publishes, and goes offline', async () => {
    const ev = signEvent({ kind: 1, content: 'before the lease', created_at: Math.floor(Date.now() / 1000) - 5 }, sk)
    const r = await rpc.call('peer.request', {
      peerKey: ready.swarmPublicKey,
      method: 'POST',
      path: `/post/relay/${ready.relayKey}`,
      body: { message: JSON.stringify(['EVENT', ev]), connectionKey: 'ab'.repeat(16) }
    })
    assert.deepEqual(ndjson(r), [['OK', ev.id, true, '']])
    await caughtUp(ready.relay.systemKey)
    await caughtUp(ready.relay.viewKey)
    await caughtUp(ready.relayKey)
    await stopProcess(worker)
    await rpc.waitEvent((f) => f.event === 'peer.disconnected' && f.data.peerKey === ready.swarmPublicKey, 20_000)
  })

  it('refuses a key pair that does not match and a lease already expired', async () => {
    const other = Buffer.alloc(64, 7).toString('base64')
    await assert.rejects(rpc.call('lease.open', { leaseId: 'bad', relayKey: ready.relayKey, writerPublicKey: writer.publicKey, writerSecretKey: other, fencing: 1, expiresAt: Date.now() + 60_000 }),
      (e) => e.code === 'invalid-params' && !e.message.includes(other))
    await assert.rejects(rpc.call('lease.open', { leaseId: 'old', relayKey: ready.relayKey, writerPublicKey: writer.publicKey, writerSecretKey: writer.secretKey, fencing: 1, expiresAt: Date.now() - 1 }),
      (e) => e.code === 'lease-expired')
    await assert.rejects(rpc.call('lease.open', { leaseId: 'unknown', relayKey: 'ee'.repeat(32), writerPublicKey: writer.publicKey, writerSecretKey: writer.secretKey, fencing: 1, expiresAt: Date.now() + 60_000 }),
      (e) => e.code === 'lease-unavailable')
  })

  it('refuses, without waiting out the open timeout, a key the relay never added', async () => {
    const stranger = crypto.keyPair()
    const started = Date.now()
    await assert.rejects(rpc.call('lease.open', {
      leaseId: 'stranger', relayKey: ready.relayKey, writerPublicKey: stranger.publicKey.toString('hex'),
      writerSecretKey: stranger.secretKey.toString('base64'), fencing: 2, expiresAt: Date.now() + 60_000
    }, { timeoutMs: 70_000 }), (e) => e.code === 'not-a-writer')
    assert.ok(Date.now() - started < 30_000)
    assert.deepEqual((await rpc.call('lease.status')).leases, [])
  })

  it('opens the lease from the blind peer alone and appends as the gateway writer', async () => {
    const opened = await rpc.call('lease.open', {
      leaseId: 'lease-1', relayKey: ready.relayKey, writerPublicKey: writer.publicKey,
      writerSecretKey: writer.secretKey, fencing: 5, expiresAt: Date.now() + 120_000
    }, { timeoutMs: 70_000 })
    assert.equal(opened.writable, true)
    assert.equal(opened.writerKey, writer.writerKey)
    assert.equal(opened.fencing, 5)

    leased = signEvent({ kind: 1, content: 'written under a lease', created_at: Math.floor(Date.now() / 1000) }, sk)
    await assert.rejects(rpc.call('lease.append', { leaseId: 'lease-1', fencing: 4, event: leased }), (e) => e.code === 'stale-fencing')
    await assert.rejects(rpc.call('lease.append', { leaseId: 'lease-1', fencing: 5, event: { ...leased, content: 'forged' } }), (e) => e.code === 'invalid-params')
    await assert.rejects(rpc.call('lease.open', {
      leaseId: 'lease-0', relayKey: ready.relayKey, writerPublicKey: writer.publicKey,
      writerSecretKey: writer.secretKey, fencing: 4, expiresAt: Date.now() + 60_000
    }), (e) => e.code === 'stale-fencing')
    const res = await rpc.call('lease.append', { leaseId: 'lease-1', fencing: 5, event: leased })
    assert.equal(res.appended, true)
    assert.equal(res.eventId, leased.id)
    assert.equal(res.mirrored, true, 'the blind peer holds the leased write')
    const again = await rpc.call('lease.append', { leaseId: 'lease-1', fencing: 5, event: leased })
    assert.equal(again.duplicate, true)
    const st = await rpc.call('lease.status')
    assert.deepEqual(st.leases.map((l) => [l.leaseId, l.appends]), [['lease-1', 1]])
    assert.ok(!JSON.stringify(st).includes(writer.secretKey))

    const closed = await rpc.call('lease.close', { leaseId: 'lease-1' })
    assert.equal(closed.closed, true)
    await rpc.waitEvent((f) => f.event === 'lease.closed' && f.data.leaseId === 'lease-1')
    await assert.rejects(rpc.call('lease.append', { leaseId: 'lease-1', fencing: 5, event: leased }), (e) => e.code === 'not-found')
  })

  it('a lease stops accepting writes at expiresAt', async () => {
    await rpc.call('lease.open', {
      leaseId: 'lease-2', relayKey: ready.relayKey, writerPublicKey: writer.publicKey,
      writerSecretKey: writer.secretKey, fencing: 6, expiresAt: Date.now() + 4000
    }, { timeoutMs: 70_000 })
    const expired = await rpc.waitEvent((f) => f.event === 'lease.closed' && f.data.leaseId === 'lease-2', 10_000)
    assert.equal(expired.data.reason, 'expired')
    const late = signEvent({ kind: 1, content: 'too late' }, sk)
    await assert.rejects(rpc.call('lease.append', { leaseId: 'lease-2', fencing: 6, event: late }), (e) => e.code === 'lease-expired')
  })

  it('the returning worker sees the leased event in its view', async () => {
    worker = spawnReady('src/worker/main.mjs', workerArgs(), { marker: 'HYPERTUNA_WORKER_READY' })
    const back = await worker.ready
    assert.equal(back.relayKey, ready.relayKey)
    const found = await waitFor(async () => {
      const r = await rpc.call('peer.request', {
        peerKey: back.swarmPublicKey,
        method: 'POST',
        path: `/post/relay/${back.relayKey}`,
        body: { message: JSON.stringify(['REQ', 'l', { ids: [leased.id] }]), connectionKey: 'cd'.repeat(16) },
        timeoutMs: 5000
      })
      return ndjson(r).find((f) => f[0] === 'EVENT') || null
    }, { timeoutMs: 60_000, intervalMs: 500, what: 'the leased event on the returning worker' })
    assert.deepEqual(found[2], leased)
  })

  it('never logs the leased key', () => {
    const logs = bridge.stderr.join('')
    assert.ok(logs.includes('lease opened'), 'debug logs were captured')
    assert.ok(!logs.includes(writer.secretKey))
    assert.ok(!logs.includes(Buffer.from(writer.secretKey, 'base64').toString('hex')))
  })
})
