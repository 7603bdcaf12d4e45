import test from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import HypercoreId from 'hypercore-id-encoding'
import { ReferenceWorker } from '../src/worker/worker.mjs'
import { collectRelayCores, z32Key } from '../src/worker/relay-cores.mjs'
import { startLocalTestnet } from '../src/swarm/bootstrap.mjs'
import { signEvent, randomSecretKeyHex } from '../src/worker/nostr.mjs'
import { startFakeGateway } from './helpers/fake-gateway.mjs'

const SECRET = 'real-mode-test-secret'
const REAL = { wsPush: false, subscriptionNotices: true, relayCores: true, metadataPost: false, separateBlindPeerKey: true }

function quiet () {
  const noop = () => {}
  const l = { debug: noop, info: noop, warn: noop, error: noop }
  l.child = () => l
  return l
}

async function setup (t) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ht-real-mode-'))
  const testnet = await startLocalTestnet(4)
  const gateway = await startFakeGateway(SECRET)
  const workers = []
  const start = async (opts = {}, storage = 'w') => {
    const worker = new ReferenceWorker({
      bootstrap: testnet.bootstrap,
      storageDir: path.join(dir, storage),
      logger: quiet(),
      telemetryIntervalMs: 0,
      gatewayUrl: gateway.url,
      secret: SECRET,
      ...opts
    })
    await worker.start()
    workers.push(worker)
    return worker
  }
  t.after(async () => {
    for (const w of workers) await w.stop()
    await gateway.close()
    await testnet.destroy()
    fs.rmSync(dir, { recursive: true, force: true })
  })
  return { dir, gateway, start }
}

/** Drive the worker's router the way a gateway channel would. */
function call (worker, { method = 'GET', path: p, body = null, peerKey = 'ab'.repeat(32) }) {
  return worker.router.handle({
    method,
    path: p,
    query: {},
    headers: {},
    body: body === null ? Buffer.alloc(0) : Buffer.from(JSON.stringify(body)),
    channel: { remoteHandshake: {}, closed: false, sendWsFrame: () => false },
    peerKey
  })
}

function lines (res) {
  const text = res.body.toString()
  return text === '' ? [] : text.split('\n').map((l) => JSON.parse(l))
}

const hexOf = (z32) => HypercoreId.decode(z32).toString('hex')

test('relayCores name the Autobase, its system and its view cores in z-base-32, other writers role-less', async (t) => {
  const { start } = await setup(t)
  const worker = await start({ ...REAL, blindPeer: 'gateway', gatewayWriter: true })
  const info = worker.relay.info()
  const cores = collectRelayCores(worker.relay.base, [worker.gatewayWriter.writerKey])
  assert.deepEqual(cores, [
    { key: z32Key(worker.relayKey), role: 'autobase' },
    { key: z32Key(info.systemKey), role: 'autobase-system' },
    { key: z32Key(info.viewKey), role: 'autobase-view' },
    { key: z32Key(worker.gatewayWriter.writerKey) }
  ])
  for (const c of cores) assert.match(c.key, /^[ybndrfg8ejkmcpqxot1uwisza345h769]{52}$/)
  // The worker lists every writer but its own local core (which is the relay key here).
  assert.deepEqual(await worker.relayCores(), cores)
})

test('--real-worker-mode registrations: relayCores + merge, and a distinct blindPeeringPublicKey in both', async (t) => {
  const { gateway, start } = await setup(t)
  const worker = await start({ ...REAL, blindPeer: 'gateway' })
  await worker.waitRegistered()
  const reg = gateway.registrations.at(-1)
  assert.equal(reg.valid, true, 'the signature covers relayCores too')
  const r = reg.registration
  assert.equal(r.relayCoresMode, 'merge')
  assert.deepEqual(r.relayCores, await worker.relayCores())
  assert.deepEqual(r.relayCores.map((c) => [hexOf(c.key), c.role]), [
    [worker.relayKey, 'autobase'],
    [worker.relay.info().systemKey, 'autobase-system'],
    [worker.relay.info().viewKey, 'autobase-view']
  ])
  const bpk = r.metadata.blindPeeringPublicKey
  assert.equal(bpk, worker.blindPeeringPublicKey)
  assert.equal(bpk.length, 52)
  assert.notEqual(hexOf(bpk), worker.swarmPublicKey, 'the blind-peering key is not the swarm key')
  assert.deepEqual(r.peers, [worker.swarmPublicKey])
  assert.equal(worker.status().blindPeeringPublicKey, bpk)

  // The swarm registration names it at the top and on the relay, each time also inside metadata.
  let sent = null
  const channel = { request: async (req) => { sent = req.body; return { statusCode: 200, body: Buffer.from('{}') } } }
  await worker._registerOverSwarm({ peerKey: 'cd'.repeat(32), channel })
  assert.equal(sent.publicKey, worker.swarmPublicKey)
  assert.equal(sent.blindPeeringPublicKey, bpk)
  assert.deepEqual(sent.metadata, { blindPeeringPublicKey: bpk })
  assert.equal(sent.relays[0].blindPeeringPublicKey, bpk)
  assert.deepEqual(sent.relays[0].metadata, { blindPeeringPublicKey: bpk })
  assert.equal(sent.relayCores, undefined, 'real workers send relayCores only in the signed registration')

  // The key is kept in storage: a restart announces the same one.
  await worker.stop()
  const again = await start({ ...REAL, blindPeer: 'gateway' })
  assert.equal(again.blindPeeringPublicKey, bpk)
})

test('by default nothing of the real-worker format is sent', async (t) => {
  const { gateway, start } = await setup(t)
  const worker = await start({ blindPeer: 'gateway' })
  await worker.waitRegistered()
  const r = gateway.registrations.at(-1).registration
  assert.equal(r.relayCores, undefined)
  assert.equal(r.relayCoresMode, undefined)
  assert.equal(r.metadata.blindPeeringPublicKey, undefined)
  assert.equal(worker.blindPeeringPublicKey, null)
  assert.ok(worker._handshake().capabilities.includes('wsframe-push'))
  // Without a blind peer there is no blind-peering key to announce, whatever the flags.
  const plain = await start({ ...REAL }, 'plain')
  assert.equal(plain.blindPeeringPublicKey, null)
})

test('poll-only with notices: REQ answers the real NOTICE, events and EOSE come from the poll, nothing is pushed', async (t) => {
  const { start } = await setup(t)
  const worker = await start({ ...REAL, blindPeer: 'gateway' })
  assert.deepEqual(worker._handshake().capabilities, ['http', 'websocket', 'health', 'telemetry'])
  const sk = randomSecretKeyHex()
  const stored = signEvent({ kind: 1, content: 'stored' }, sk)
  await worker.relay.putEvent(stored)
  const gwKey = 'ab'.repeat(32)
  let pushes = 0
  const channel = { closed: false, sendWsFrame: () => { pushes++; return true } }
  // A gateway that offers push: a poll-only worker still never uses it.
  worker.gateways.set(gwKey, { peerKey: gwKey, channel, capabilities: new Set(['wsframe-push']) })
  const ck = '78'.repeat(16)
  const post = (message) => call(worker, { method: 'POST', path: `/post/relay/${worker.relayKey}`, body: { message: JSON.stringify(message), connectionKey: ck }, peerKey: gwKey })
  const poll = async () => (await call(worker, { path: `/get/relay/${worker.relayKey}/${ck}`, peerKey: gwKey })).body

  assert.deepEqual(lines(await post(['REQ', 'sub1', { kinds: [1] }])), [['NOTICE', 'Subscription sub1 created/updated successfully']])
  await new Promise((resolve) => setImmediate(resolve))
  assert.deepEqual(await poll(), [['EVENT', 'sub1', stored], ['EOSE', 'sub1']])
  const live = signEvent({ kind: 1, content: 'live' }, sk)
  assert.deepEqual(lines(await post(['EVENT', live])), [['OK', live.id, true, '']])
  assert.deepEqual(await poll(), [['EVENT', 'sub1', live]])

  // One-shot fetch ids get no notice, as on real workers; their results still come from the poll.
  assert.deepEqual(lines(await post(['REQ', 'f-fetch-events-1', { ids: [stored.id] }])), [])
  assert.deepEqual(await poll(), [['EVENT', 'f-fetch-events-1', stored], ['EOSE', 'f-fetch-events-1']])
  // A refused REQ is answered at once; CLOSE answers the real worker's notice.
  assert.deepEqual(lines(await post(['REQ', 'bad', { kinds: 'x' }])), [['CLOSED', 'bad', 'invalid: kinds must be a list of integers']])
  assert.deepEqual(lines(await post(['CLOSE', 'sub1'])), [['NOTICE', 'Subscription closed']])
  await worker.relay.putEvent(signEvent({ kind: 1, content: 'after close' }, sk))
  assert.deepEqual(await poll(), [])
  assert.equal(pushes, 0)
})
