import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import HypercoreId from 'hypercore-id-encoding'
import { waitFor } from './helpers/procs.mjs'
import { startBridge, startWorker, stopStack } from './helpers/bridge-stack.mjs'
import { startFakeGateway } from './helpers/fake-gateway.mjs'

const SECRET = 'blind-trust-wait-secret'

// Real workers mirror as soon as their relay exists, before their signed registration has made Python
// trust their blind-peering key, and shut down on a refused add-core. The bridge holds such requests and
// admits them when trust arrives: the worker never sees a refusal.
describe('add requests that arrive before trust are held, then admitted', { timeout: 120_000 }, () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ht-trust-wait-'))
  let bridge, worker, gateway, rpc, ready

  before(async () => {
    gateway = await startFakeGateway(SECRET)
    ;({ bridge, rpc } = await startBridge({
      dir,
      env: { HYPERTUNA_BRIDGE_BLIND_PEER_TRUST_WAIT_MS: '60000' },
      subscribe: ['mirror.*'],
      client: 'trust-wait-test'
    }))
    worker = startWorker({
      dir,
      gateway,
      secret: SECRET,
      name: 'early',
      args: ['--blind-peer', 'gateway', '--real-worker-mode']
    })
    ready = await worker.ready
  })

  after(() => stopStack({ rpc, worker, bridge, gateway, dir }))

  it('holds the untrusted requests without storing or refusing anything', async () => {
    await waitFor(async () => (await rpc.call('blindPeer.status')).heldAddRequests > 0, { timeoutMs: 30_000, what: 'a held add-core' })
    const status = await rpc.call('blindPeer.status')
    assert.equal(status.refusedAddRequests, 0)
    assert.equal(status.cores, 0, 'nothing is stored while a request waits')
  })

  it('admits them the moment the announced key is trusted, with no refusal ever sent', async () => {
    await rpc.call('blindPeer.trust', { peerKey: ready.blindPeeringPublicKey, relayKey: ready.relayKey, keys: [ready.relayKey] })
    const added = await rpc.waitEvent((f) => f.event === 'mirror.added' && f.data.relayKey === ready.relayKey, 30_000)
    assert.equal(added.data.ownerPeerKey, HypercoreId.decode(ready.blindPeeringPublicKey).toString('hex'))
    await waitFor(async () => (await rpc.call('blindPeer.status')).heldAddRequests === 0, { timeoutMs: 10_000, what: 'no request left waiting' })
    assert.equal((await rpc.call('blindPeer.status')).refusedAddRequests, 0)
    assert.equal(worker.child.exitCode, null)
  })
})
