import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { spawnReady, stopProcess, waitFor } from './helpers/procs.mjs'
import { TestRpcClient, ndjson } from './helpers/rpc-client.mjs'
import { startFakeGateway } from './helpers/fake-gateway.mjs'
import { signEvent, randomSecretKeyHex } from '../src/worker/nostr.mjs'

const SECRET = 'failover-test-secret'


describe('two workers host one relay', { timeout: 150_000 }, () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ht-failover-'))
  const socketPath = path.join(dir, 'bridge.sock')
  const swarmFile = path.join(dir, 'swarm.json')
  const sk = randomSecretKeyHex()
  let bridge, workerA, workerB, gateway, rpc, readyA, readyB, joined

  const post = (peerKey, relayKey, frame, connectionKey) => rpc.call('peer.request', {
    peerKey,
    method: 'POST',
    path: `/post/relay/${relayKey}`,
    body: { message: JSON.stringify(frame), connectionKey }
  })

  before(async () => {
    gateway = await startFakeGateway(SECRET)
    bridge = spawnReady('src/main.mjs', [], {
      marker: 'HYPERTUNA_BRIDGE_READY',
      env: {
        HYPERTUNA_BRIDGE_SOCKET: socketPath,
        HYPERTUNA_SWARM_BOOTSTRAP: 'local',
        HYPERTUNA_SWARM_BOOTSTRAP_FILE: swarmFile,
        HYPERTUNA_BRIDGE_STORAGE: path.join(dir, 'bridge'),
        HYPERTUNA_BRIDGE_BLIND_PEER: 'off'
      }
    })
    await bridge.ready
    rpc = await TestRpcClient.connect(socketPath)
    await rpc.call('hello', { protocol: 1, client: 'failover-test' })
    workerA = spawnReady('src/worker/main.mjs', [
      '--bootstrap-file', swarmFile, '--storage', path.join(dir, 'a'), '--name', 'shared',
      '--gateway-url', gateway.url, '--secret', SECRET, '--allow-join'
    ], { marker: 'HYPERTUNA_WORKER_READY' })
    readyA = await workerA.ready
    workerB = spawnReady('src/worker/main.mjs', [
      '--bootstrap-file', swarmFile, '--storage', path.join(dir, 'b'), '--name', 'shared',
      '--owner', readyA.ownerPubkey,
      '--gateway-url', gateway.url, '--secret', SECRET,
      '--join', readyA.relayKey, '--join-peer', readyA.swarmPublicKey
    ], { marker: 'HYPERTUNA_WORKER_READY' })
    readyB = await workerB.ready
  })

  after(async () => {
    if (rpc) rpc.close()
    await stopProcess(workerB)
    await stopProcess(workerA)
    await stopProcess(bridge)
    if (gateway) await gateway.close()
    fs.rmSync(dir, { recursive: true, force: true })
  })

  it('the joining worker hosts the same relay key and becomes a writer', async () => {
    assert.equal(readyB.relayKey, readyA.relayKey)
    assert.notEqual(readyB.swarmPublicKey, readyA.swarmPublicKey)
    assert.equal(readyB.identifier, readyA.identifier)
    const line = await waitFor(() => workerB.lines.find((l) => l.startsWith('HYPERTUNA_WORKER_JOINED ')), { timeoutMs: 60_000, what: 'join' })
    joined = JSON.parse(line.slice('HYPERTUNA_WORKER_JOINED '.length))
    assert.equal(joined.state, 'writable')
    assert.equal(joined.relayKey, readyA.relayKey)
    assert.equal(joined.peer, readyA.swarmPublicKey)
  })

  it('both register the relay over HTTP, each listing its own peer key', async () => {
    const regA = await waitFor(() => gateway.registrations.find((r) => r.valid && r.registration.peers[0] === readyA.swarmPublicKey), { what: 'A registration' })
    const regB = await waitFor(() => gateway.registrations.find((r) => r.valid && r.registration.peers[0] === readyB.swarmPublicKey), { what: 'B registration' })
    assert.equal(regA.registration.relayKey, readyA.relayKey)
    assert.equal(regB.registration.relayKey, readyA.relayKey)
    assert.deepEqual(regB.registration.peers, [readyB.swarmPublicKey])
  })

  it('events written through A are read through B and vice versa', async () => {
    const now = Math.floor(Date.now() / 1000)
    const viaA = signEvent({ kind: 1, content: 'written via A', created_at: now - 2 }, sk)
    const viaB = signEvent({ kind: 1, content: 'written via B', created_at: now - 1 }, sk)
    assert.deepEqual(ndjson(await post(readyA.swarmPublicKey, readyA.relayKey, ['EVENT', viaA], 'a1'.repeat(16))), [['OK', viaA.id, true, '']])
    assert.deepEqual(ndjson(await post(readyB.swarmPublicKey, readyB.relayKey, ['EVENT', viaB], 'b1'.repeat(16))), [['OK', viaB.id, true, '']])
    const query = async (peerKey, id, ck) => {
      const frames = ndjson(await post(peerKey, readyA.relayKey, ['REQ', 'q', { ids: [id] }], ck))
      return frames.find((f) => f[0] === 'EVENT') || null
    }
    const seenOnB = await waitFor(() => query(readyB.swarmPublicKey, viaA.id, 'b2'.repeat(16)), { timeoutMs: 30_000, what: 'A event on B' })
    assert.deepEqual(seenOnB[2], viaA)
    const seenOnA = await waitFor(() => query(readyA.swarmPublicKey, viaB.id, 'a2'.repeat(16)), { timeoutMs: 30_000, what: 'B event on A' })
    assert.deepEqual(seenOnA[2], viaB)
    const both = ndjson(await post(readyB.swarmPublicKey, readyA.relayKey, ['REQ', 'all', { kinds: [1], authors: [viaA.pubkey] }], 'b3'.repeat(16)))
    assert.deepEqual(both.map((f) => f[2] && f[2].content), ['written via B', 'written via A', undefined])
  })

  it('with the blind peer off, its methods say so', async () => {
    assert.deepEqual(await rpc.call('blindPeer.status'), { enabled: false })
    await assert.rejects(rpc.call('replica.readView', { relayKey: readyA.relayKey, viewCoreKey: null, startSeq: 0, limit: 1 }), (e) => e.code === 'unavailable')
    await assert.rejects(rpc.call('lease.status'), (e) => e.code === 'unavailable')
  })

  it('a worker without --allow-join refuses join requests', async () => {
    const r = await rpc.call('peer.request', {
      peerKey: readyB.swarmPublicKey,
      method: 'POST',
      path: '/relay/join',
      body: { relayKey: readyA.relayKey, writerKey: 'cd'.repeat(32) }
    })
    assert.equal(r.statusCode, 403)
  })
})
