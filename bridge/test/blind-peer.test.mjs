import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { spawnReady, stopProcess, waitFor } from './helpers/procs.mjs'
import { stopStack } from './helpers/bridge-stack.mjs'
import { TestRpcClient, ndjson } from './helpers/rpc-client.mjs'
import { startFakeGateway } from './helpers/fake-gateway.mjs'
import { signEvent, randomSecretKeyHex } from '../src/worker/nostr.mjs'
import { loadBlindModules } from '../src/blind/modules.mjs'

const SECRET = 'blind-peer-test-secret'


describe('blind peer in the bridge: a worker mirrors, goes away, and its events stay readable', { timeout: 170_000 }, () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ht-blind-'))
  const socketPath = path.join(dir, 'bridge.sock')
  const swarmFile = path.join(dir, 'swarm.json')
  const bridgeEnv = {
    HYPERTUNA_BRIDGE_SOCKET: socketPath,
    HYPERTUNA_SWARM_BOOTSTRAP: 'local',
    HYPERTUNA_SWARM_BOOTSTRAP_FILE: swarmFile,
    HYPERTUNA_BRIDGE_STORAGE: path.join(dir, 'bridge'),
    HYPERTUNA_BRIDGE_REPLICA_CACHE: '2',
    HYPERTUNA_BRIDGE_MIRROR_PROGRESS_MS: '250',
    // Refusals are what this suite checks: hold untrusted add requests only briefly.
    HYPERTUNA_BRIDGE_BLIND_PEER_TRUST_WAIT_MS: '300'
  }
  const sk = randomSecretKeyHex()
  const published = []
  let bridge, worker, gateway, rpc, ready, bp, viewKey

  let blobsKey
  const startBridge = async (extraEnv = {}) => {
    bridge = spawnReady('src/main.mjs', [], { marker: 'HYPERTUNA_BRIDGE_READY', env: { ...bridgeEnv, ...extraEnv } })
    await bridge.ready
    rpc = await TestRpcClient.connect(socketPath)
    await rpc.call('hello', { protocol: 1, client: 'blind-test', subscribe: ['mirror.*', 'peer.*'] })
  }

  before(async () => {
    gateway = await startFakeGateway(SECRET)
    fs.mkdirSync(path.join(dir, 'files'))
    fs.writeFileSync(path.join(dir, 'files', 'note.txt'), 'a file in the relay drive\n')
    await startBridge()
    bp = await rpc.call('blindPeer.status')
    worker = spawnReady('src/worker/main.mjs', [
      '--bootstrap-file', swarmFile,
      '--storage', path.join(dir, 'worker'),
      '--name', 'mirrored',
      '--gateway-url', gateway.url,
      '--secret', SECRET,
      '--blind-peer', 'gateway',
      '--drive-import', path.join(dir, 'files'),
      '--register-interval-ms', '3000'
    ], { marker: 'HYPERTUNA_WORKER_READY' })
    ready = await worker.ready
  })

  after(() => stopStack({ rpc, worker, bridge, gateway, dir }))

  it('advertises the blind peer in the handshake and status', async () => {
    assert.equal(bp.enabled, true)
    assert.match(bp.publicKey, /^[0-9a-f]{64}$/)
    assert.match(bp.encryptionKey, /^[0-9a-f]{64}$/)
    assert.notEqual(bp.publicKey, JSON.parse(fs.readFileSync(swarmFile, 'utf8')).gatewayPublicKey)
    assert.equal(bp.versions.blindPeer, '3.8.1')
    assert.equal(bp.versions.corestore.split('.')[0], '7')
    assert.deepEqual(bp.cache, { size: 0, max: 2, hits: 0, misses: 0, evictions: 0, closeErrors: 0 })
    const connected = await rpc.waitEvent((f) => f.event === 'peer.connected' && f.data.peerKey === ready.swarmPublicKey)
    assert.ok(connected)
    // The worker was started with `--blind-peer gateway`: it took the key from the handshake.
    const st = await waitFor(() => {
      const s = JSON.parse(fs.readFileSync(path.join(dir, 'worker', 'status.json'), 'utf8'))
      return s.mirror ? s : null
    }, { what: 'worker mirror status' })
    assert.equal(st.mirror.blindPeerKey, bp.publicKey)
  })

  it('refuses cores from a worker Python has not trusted, then accepts them once trusted', async () => {
    // The worker learnt the blind-peer key from the gateway handshake and is already trying.
    await waitFor(async () => (await rpc.call('blindPeer.status')).refusedAddRequests > 0, { timeoutMs: 30_000, what: 'a refused add-core' })
    assert.equal((await rpc.call('blindPeer.status')).cores, 0, 'nothing is stored for an untrusted peer')
    // Trusted for another relay only: the worker's cores (referrer = its relay key) stay refused.
    const other = 'ab'.repeat(32)
    await rpc.call('blindPeer.trust', { peerKey: ready.swarmPublicKey, relayKey: other, keys: [other] })
    const before = (await rpc.call('blindPeer.status')).refusedAddRequests
    await waitFor(async () => (await rpc.call('blindPeer.status')).refusedAddRequests > before, { timeoutMs: 30_000, what: 'a refusal out of scope' })
    assert.equal((await rpc.call('blindPeer.status')).cores, 0, 'a key trusted for relay B adds nothing for relay A')
    await rpc.call('blindPeer.untrust', { peerKey: ready.swarmPublicKey, relayKey: other })
    const t = await rpc.call('blindPeer.trust', { peerKey: ready.swarmPublicKey, relayKey: ready.relayKey, keys: [ready.relayKey] })
    assert.equal(t.trusted, true)
    assert.equal(t.relayKey, ready.relayKey)
    const added = await rpc.waitEvent((f) => f.event === 'mirror.added' && f.data.ownerPeerKey === ready.swarmPublicKey, 40_000)
    assert.equal(added.data.relayKey, ready.relayKey)
    assert.equal(added.data.referrer, ready.relayKey)
    assert.equal(added.data.announce, false, 'announce is downgraded: no peer is trusted to announce')
    const writer = await rpc.waitEvent((f) => f.event === 'mirror.added' && f.data.coreKey === ready.relayKey, 20_000)
    assert.equal(writer.data.type, 'writer')
    const status = await rpc.call('blindPeer.status')
    assert.deepEqual(status.trustedPeers.map((p) => p.key), [ready.swarmPublicKey])
  })

  it('the worker posts signed metadata naming every relay core', async () => {
    const meta = await waitFor(() => gateway.metadata.find((m) => m.payload.cores.some((c) => c.type === 'autobase-view')), { timeoutMs: 30_000, what: 'metadata' })
    assert.equal(meta.valid, true)
    assert.equal(meta.payload.relayKey, ready.relayKey)
    assert.equal(meta.payload.publicIdentifier, ready.identifier)
    assert.equal(meta.payload.ownerPeerKey, ready.swarmPublicKey)
    assert.ok(Math.abs(meta.payload.issuedAt - Date.now()) < 60_000)
    const types = new Set(meta.payload.cores.map((c) => c.type))
    for (const t of ['autobase-view', 'autobase-system', 'writer', 'hyperdrive-metadata', 'hyperdrive-blobs']) assert.ok(types.has(t), `${t} in ${[...types]}`)
    blobsKey = meta.payload.cores.find((c) => c.type === 'hyperdrive-blobs').coreKey
    viewKey = meta.payload.cores.find((c) => c.type === 'autobase-view').coreKey
    assert.equal(viewKey, ready.relay.viewKey)
  })

  it('events published while mirrored are all readable from the bridge after the worker stops', async () => {
    const now = Math.floor(Date.now() / 1000)
    for (let i = 0; i < 6; i++) {
      const ev = signEvent({ kind: 1, content: `mirrored ${i}`, created_at: now - 10 + i, tags: [['t', 'mirror']] }, sk)
      const r = await rpc.call('peer.request', {
        peerKey: ready.swarmPublicKey,
        method: 'POST',
        path: `/post/relay/${ready.relayKey}`,
        body: { message: JSON.stringify(['EVENT', ev]), connectionKey: 'ab'.repeat(16) }
      })
      assert.deepEqual(ndjson(r), [['OK', ev.id, true, '']])
      published.push(ev)
    }
    const health = await rpc.call('peer.request', { peerKey: ready.swarmPublicKey, method: 'GET', path: '/health' })
    const relayInfo = JSON.parse(Buffer.from(health.bodyBase64, 'base64').toString('utf8')).relay
    assert.equal(relayInfo.viewKey, viewKey)
    const target = relayInfo.viewIndexedLength
    assert.ok(target > published.length, 'each event adds its record and index entries')
    // The blind peer holds the whole signed view before the worker goes away.
    const progress = await rpc.waitEvent((f) => f.event === 'mirror.progress' && f.data.coreKey === viewKey && f.data.contiguousLength >= target, 40_000)
    assert.ok(progress.data.remoteLength >= target)
    assert.ok(progress.data.updatedAt > 0)
    const meta = await waitFor(() => gateway.metadata.find((m) => m.payload.cores.some((c) => c.type === 'autobase-view' && c.length >= target)), { timeoutMs: 20_000, what: 'metadata with the new view length' })
    assert.equal(meta.valid, true)

    await stopProcess(worker)
    await rpc.waitEvent((f) => f.event === 'peer.disconnected' && f.data.peerKey === ready.swarmPublicKey, 20_000)

    const all = await rpc.call('replica.readView', { relayKey: ready.relayKey, viewCoreKey: viewKey, startSeq: 0, limit: 1000 })
    assert.equal(all.viewCoreKey, viewKey)
    assert.ok(all.length >= target)
    assert.equal(all.nextSeq, all.length)
    assert.deepEqual(all.entries.map((e) => e.key).sort(), published.map((e) => e.id).sort())
    for (const e of all.entries) {
      assert.equal(e.type, 'put')
      const ev = published.find((p) => p.id === e.key)
      assert.equal(e.value, JSON.stringify(ev), 'the event JSON text exactly as stored')
    }
    const seqs = all.entries.map((e) => e.seq)
    assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b))

    // Paging by sequence: entries stay inside [startSeq, nextSeq) and together give the same set.
    const paged = []
    let seq = 0
    for (let i = 0; i < 100 && seq < all.length; i++) {
      const page = await rpc.call('replica.readView', { relayKey: ready.relayKey, viewCoreKey: viewKey, startSeq: seq, limit: 5 })
      assert.equal(page.nextSeq, Math.min(seq + 5, page.length))
      for (const e of page.entries) assert.ok(e.seq >= seq && e.seq < page.nextSeq)
      paged.push(...page.entries)
      seq = page.nextSeq
    }
    assert.deepEqual(paged, all.entries)
    const past = await rpc.call('replica.readView', { relayKey: ready.relayKey, viewCoreKey: viewKey, startSeq: all.length + 10, limit: 5 })
    assert.deepEqual(past, { viewCoreKey: viewKey, length: all.length, nextSeq: all.length + 10, entries: [] })

    // Without a view key the relay's view is found among the cores it referred.
    const resolved = await rpc.call('replica.readView', { relayKey: ready.relayKey, viewCoreKey: null, startSeq: 0, limit: 1000 })
    assert.equal(resolved.viewCoreKey, viewKey)
    assert.deepEqual(resolved.entries, all.entries)
  })

  it('keeps a bounded LRU of replica sessions', async () => {
    const status = await rpc.call('blindPeer.status')
    assert.ok(status.cache.size <= 2)
    assert.ok(status.cache.hits > 0)
    assert.ok(status.cores >= 4)
    await assert.rejects(rpc.call('replica.readView', { relayKey: ready.relayKey, viewCoreKey: 'cd'.repeat(32), startSeq: 0, limit: 5 }), (e) => e.code === 'core-unavailable')
    await assert.rejects(rpc.call('replica.readView', { relayKey: 'ef'.repeat(32), viewCoreKey: null, startSeq: 0, limit: 5 }), (e) => e.code === 'replica-not-found')
    await assert.rejects(rpc.call('replica.readView', { relayKey: ready.relayKey, viewCoreKey: 'nope', startSeq: 0, limit: 5 }), (e) => e.code === 'invalid-params')
  })

  it('deletes a core on request and reports it removed; gc runs', async () => {
    const list = await rpc.call('mirror.list')
    const drive = list.cores.find((c) => c.coreKey === ready.driveKey)
    assert.ok(drive, 'the drive metadata core is mirrored')
    const res = await rpc.call('blindPeer.deleteCore', { coreKey: ready.driveKey, reason: 'operator' })
    assert.deepEqual(res, { coreKey: ready.driveKey, deleted: true })
    const removed = await rpc.waitEvent((f) => f.event === 'mirror.removed' && f.data.coreKey === ready.driveKey, 5000)
    assert.equal(removed.data.reason, 'operator')
    assert.deepEqual(await rpc.call('blindPeer.deleteCore', { coreKey: ready.driveKey, reason: 'again' }), { coreKey: ready.driveKey, deleted: false })
    const gc = await rpc.call('blindPeer.gc', { reason: 'test' })
    assert.equal(gc.status, 'ok')
    assert.equal(gc.reason, 'test')
    assert.ok(gc.scanned >= 3)
    assert.equal(gc.totalEvictions, 0, 'nothing is stale yet')
  })

  it('trust and untrust take hex or z-base-32 keys', async () => {
    const { IdEnc } = loadBlindModules()
    const key = 'ef'.repeat(32)
    const t = await rpc.call('blindPeer.trust', { peerKey: IdEnc.encode(Buffer.from(key, 'hex')) })
    assert.equal(t.peerKey, key)
    assert.ok((await rpc.call('blindPeer.status')).trustedPeers.some((p) => p.key === key))
    const u = await rpc.call('blindPeer.untrust', { peerKey: key })
    assert.deepEqual(u, { peerKey: key, relayKey: null, trusted: false, removed: true })
    assert.ok(!(await rpc.call('blindPeer.status')).trustedPeers.some((p) => p.key === key))
    await assert.rejects(rpc.call('blindPeer.trust', { peerKey: 'not-a-key' }), (e) => e.code === 'invalid-params')
  })

  it('after a bridge restart the mirror is still readable and progress is replayed once per core', async () => {
    rpc.close()
    await stopProcess(bridge)
    // Restarted with a zero staleness window, so the hygiene run below has something to evict.
    await startBridge({ HYPERTUNA_BRIDGE_BLIND_PEER_STALE_MS: '0' })
    const cores = (await rpc.call('mirror.list')).cores
    const replayed = await waitFor(() => {
      const keys = new Set(rpc.events.filter((f) => f.event === 'mirror.progress').map((f) => f.data.coreKey))
      return cores.every((c) => keys.has(c.coreKey)) ? keys : null
    }, { timeoutMs: 5000, what: 'progress replay' })
    assert.ok(replayed.has(viewKey))
    const view = rpc.events.find((f) => f.event === 'mirror.progress' && f.data.coreKey === viewKey)
    assert.ok(view.data.contiguousLength > published.length)
    const again = await rpc.call('replica.readView', { relayKey: ready.relayKey, viewCoreKey: viewKey, startSeq: 0, limit: 1000 })
    assert.equal(again.entries.length, published.length)
    const status = await rpc.call('blindPeer.status')
    assert.deepEqual(status.trustedPeers.map((p) => p.key), [ready.swarmPublicKey], 'trust survives a restart')
  })

  it('hygiene evicts stale priority-0 cores and keeps the relay cores', async () => {
    assert.ok((await rpc.call('mirror.list')).cores.some((c) => c.coreKey === blobsKey && c.priority === 0))
    const gc = await rpc.call('blindPeer.gc', { reason: 'stale-test' })
    assert.equal(gc.status, 'ok')
    assert.deepEqual(gc.evicted, [blobsKey])
    assert.deepEqual(gc.evictionReasons, { stale: 1 })
    const removed = await rpc.waitEvent((f) => f.event === 'mirror.removed' && f.data.coreKey === blobsKey, 5000)
    assert.equal(removed.data.reason, 'stale')
    const left = (await rpc.call('mirror.list')).cores.map((c) => c.coreKey)
    assert.ok(left.includes(viewKey) && !left.includes(blobsKey))
    const view = await rpc.call('replica.readView', { relayKey: ready.relayKey, viewCoreKey: viewKey, startSeq: 0, limit: 1000 })
    assert.equal(view.entries.length, published.length)
  })
})
