import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import HypercoreId from 'hypercore-id-encoding'
import { waitFor } from './helpers/procs.mjs'
import { startBridge, startWorker, stopStack } from './helpers/bridge-stack.mjs'
import { startFakeGateway } from './helpers/fake-gateway.mjs'

const SECRET = 'blind-key-test-secret'

describe('a real-like worker mirrors with a blind-peering key that is not its swarm key', { timeout: 150_000 }, () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ht-blind-key-'))
  let bridge, worker, gateway, rpc, ready, bpHex

  before(async () => {
    gateway = await startFakeGateway(SECRET)
    ;({ bridge, rpc } = await startBridge({
      dir,
      // This suite checks refusals: hold untrusted add requests only briefly.
      env: { HYPERTUNA_BRIDGE_BLIND_PEER_TRUST_WAIT_MS: '300' },
      subscribe: ['mirror.*', 'peer.*'],
      client: 'blind-key-test'
    }))
    worker = startWorker({
      dir,
      gateway,
      secret: SECRET,
      name: 'reallike',
      args: ['--blind-peer', 'gateway', '--real-worker-mode']
    })
    ready = await worker.ready
    bpHex = HypercoreId.decode(ready.blindPeeringPublicKey).toString('hex')
  })

  after(() => stopStack({ rpc, worker, bridge, gateway, dir }))

  it('announces the blind-peering key in its swarm registration, distinct from its swarm key', async () => {
    assert.notEqual(bpHex, ready.swarmPublicKey)
    const reg = await rpc.waitEvent((f) => f.event === 'peer.register' && f.data.peerKey === ready.swarmPublicKey, 30_000)
    assert.equal(reg.data.body.blindPeeringPublicKey, ready.blindPeeringPublicKey)
    assert.equal(reg.data.body.relays[0].metadata.blindPeeringPublicKey, ready.blindPeeringPublicKey)
    const http = await waitFor(() => gateway.registrations.find((r) => r.valid), { what: 'HTTP registration' })
    assert.equal(http.registration.metadata.blindPeeringPublicKey, ready.blindPeeringPublicKey)
    assert.equal(http.registration.relayCoresMode, 'merge')
  })

  it('trusting its swarm key does not let its mirror in; trusting the announced key does', async () => {
    await waitFor(async () => (await rpc.call('blindPeer.status')).refusedAddRequests > 0, { timeoutMs: 30_000, what: 'a refused add-core' })
    await rpc.call('blindPeer.trust', { peerKey: ready.swarmPublicKey })
    const before = (await rpc.call('blindPeer.status')).refusedAddRequests
    await waitFor(async () => (await rpc.call('blindPeer.status')).refusedAddRequests > before, { timeoutMs: 40_000, what: 'a refusal with the swarm key trusted' })
    assert.equal((await rpc.call('blindPeer.status')).cores, 0)
    await rpc.call('blindPeer.untrust', { peerKey: ready.swarmPublicKey })

    await rpc.call('blindPeer.trust', { peerKey: ready.blindPeeringPublicKey })
    const added = await rpc.waitEvent((f) => f.event === 'mirror.added' && f.data.coreKey === ready.relay.viewKey, 60_000)
    assert.equal(added.data.ownerPeerKey, bpHex, 'the blind peer sees the blind-peering key, not the swarm key')
    assert.equal(added.data.relayKey, ready.relayKey)
  })

  it('posts no blind-peer metadata and stays alive', async () => {
    const st = await waitFor(() => {
      const s = JSON.parse(fs.readFileSync(path.join(dir, 'worker', 'status.json'), 'utf8'))
      return s.mirror && s.mirror.cores.some((c) => c.accepted) ? s : null
    }, { what: 'accepted cores in the worker status' })
    assert.equal(st.mirror.lastMetadata, null)
    assert.equal(gateway.metadata.length, 0)
    assert.equal(worker.child.exitCode, null)
    const health = await rpc.call('peer.request', { peerKey: ready.swarmPublicKey, method: 'GET', path: '/health' })
    assert.equal(health.statusCode, 200)
  })
})
