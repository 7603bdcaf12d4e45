import test from 'node:test'
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import b4a from 'b4a'
import { ReferenceWorker } from '../src/worker/worker.mjs'
import { quiet, startTestWorker } from './helpers/worker.mjs'
import { MemoryRelayStore } from '../src/worker/memory-store.mjs'
import { RelayChannel, baseHandshake } from '../src/protocol/relay-protocol.mjs'
import { createSwarm, startLocalTestnet } from '../src/swarm/bootstrap.mjs'
import { signEvent, randomSecretKeyHex } from '../src/worker/nostr.mjs'

/** A worker as `--memory-store` starts it, on a testnet of its own. */
function startWorker (t, opts = {}) {
  return startTestWorker(t, {
    memoryStore: true,
    verifySignatures: false,
    ...opts
  }, 'ht-worker-mem-')
}

/**
 * A gateway's side of the worker protocol over Hyperswarm: dials the worker's swarm key, advertises
 * 'wsframe-push' and identifies itself, as the bridge does; `frames` collects the pushed frames.
 */
async function dialAsGateway (t, worker, testnet) {
  const swarm = createSwarm({ bootstrap: testnet.bootstrap, host: '127.0.0.1' })
  t.after(() => swarm.destroy())
  const channel = await new Promise((resolve) => {
    swarm.on('connection', (stream) => {
      stream.on('error', () => {})
      const handshake = { ...baseHandshake({ isServer: false }), capabilities: ['http', 'websocket', 'wsframe-push'] }
      const ch = RelayChannel.from(stream, { handshake })
      ch.once('open', () => resolve(ch))
      ch.open()
    })
    swarm.joinPeer(b4a.from(worker.swarmPublicKey, 'hex'))
  })
  const pushed = []
  channel.on('wsframe', (m) => pushed.push(m))
  const identified = await channel.request({ method: 'POST', path: '/identify-gateway', body: Buffer.from('{}') })
  assert.equal(identified.statusCode, 200)
  const post = async (message, connectionKey) => {
    const body = Buffer.from(JSON.stringify({ message: JSON.stringify(message), connectionKey }))
    const res = await channel.request({ method: 'POST', path: `/post/relay/${worker.relayKey}`, body })
    assert.equal(res.statusCode, 200)
    const text = res.body.toString('utf8')
    return text === '' ? [] : text.trim().split('\n').map((l) => JSON.parse(l))
  }
  return { post, pushed }
}

async function until (predicate, ms = 10_000) {
  const deadline = Date.now() + ms
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error('timed out')
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

test('memory store: EVENT is OK, REQ returns it, a duplicate is answered duplicate:, a subscriber gets it pushed', async (t) => {
  const { worker, testnet } = await startWorker(t)
  assert.equal(worker.status().relay.memory, true)
  const { post, pushed } = await dialAsGateway(t, worker, testnet)
  const sk = randomSecretKeyHex()
  const ev = signEvent({ kind: 1, content: 'in memory', tags: [['t', 'bench']] }, sk)

  assert.deepEqual(await post(['REQ', 'live', { '#t': ['bench'] }], 'aa'.repeat(16)), [['EOSE', 'live']])
  assert.deepEqual(await post(['EVENT', ev], 'bb'.repeat(16)), [['OK', ev.id, true, '']])
  assert.deepEqual(await post(['EVENT', ev], 'bb'.repeat(16)), [['OK', ev.id, true, 'duplicate: already have this event']])
  assert.deepEqual(await post(['REQ', 'stored', { authors: [ev.pubkey] }], 'cc'.repeat(16)), [['EVENT', 'stored', ev], ['EOSE', 'stored']])

  await until(() => pushed.length > 0)
  assert.equal(pushed.length, 1, 'the duplicate is not pushed again')
  assert.equal(pushed[0].type, 'nostr-frames')
  assert.equal(pushed[0].connectionKey, 'aa'.repeat(16))
  assert.deepEqual(pushed[0].frames, [['EVENT', 'live', ev]])
})

test('memory store: the id is checked, the signature is not', async (t) => {
  const { worker, testnet } = await startWorker(t)
  const { post } = await dialAsGateway(t, worker, testnet)
  const ev = signEvent({ kind: 1, content: 'x' }, randomSecretKeyHex())
  const tampered = { ...ev, content: 'y' }
  const [[, , accepted, reason]] = await post(['EVENT', tampered], 'dd'.repeat(16))
  assert.equal(accepted, false)
  assert.match(reason, /^invalid: event id/)
  const other = signEvent({ kind: 1, content: 'x' }, randomSecretKeyHex())
  assert.deepEqual(await post(['EVENT', { ...ev, sig: other.sig }], 'dd'.repeat(16)), [['OK', ev.id, true, '']])
})

test('memory store hides superseded versions and deleted events as the Autobase store does', async () => {
  const store = new MemoryRelayStore()
  const sk = randomSecretKeyHex()
  const old = signEvent({ kind: 0, content: 'old', created_at: 100 }, sk)
  const fresh = signEvent({ kind: 0, content: 'new', created_at: 200 }, sk)
  const note = signEvent({ kind: 1, content: 'gone', created_at: 150 }, sk)
  const kept = signEvent({ kind: 1, content: 'kept', created_at: 160 }, sk)
  for (const ev of [old, fresh, note, kept]) assert.equal((await store.putEvent(ev)).stored, true)
  const byOther = signEvent({ kind: 5, tags: [['e', kept.id]], created_at: 300 }, randomSecretKeyHex())
  const deletion = signEvent({ kind: 5, tags: [['e', note.id]], created_at: 300 }, sk)
  await store.putEvent(byOther)
  await store.putEvent(deletion)
  const ids = (await store.queryFilters([{ authors: [old.pubkey] }])).map((e) => e.id)
  assert.deepEqual(ids, [deletion.id, fresh.id, kept.id])
  assert.deepEqual((await store.query({ kinds: [1], limit: 1 })).map((e) => e.id), [kept.id])
  assert.equal((await store.putEvent(signEvent({ kind: 0, content: 'older', created_at: 50 }, sk))).visible, false)
})

test('the worker command refuses --memory-store with an Autobase feature, as it refuses a bad flag', () => {
  const run = spawnSync(process.execPath, ['src/worker/main.mjs', '--bootstrap', '127.0.0.1:1', '--memory-store', '--allow-join'], {
    cwd: path.join(import.meta.dirname, '..'),
    encoding: 'utf8',
    timeout: 30_000
  })
  assert.equal(run.status, 2, run.stderr)
  assert.match(run.stderr, /^reference-worker: .*no Autobase for allowJoin/m)
})

test('a memory-store worker refuses what needs the Autobase, and storage of the other kind', async (t) => {
  assert.throws(() => new ReferenceWorker({ bootstrap: [{ host: '127.0.0.1', port: 1 }], storageDir: '/nonexistent', memoryStore: true, allowJoin: true }),
    /no Autobase for allowJoin/)
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ht-worker-mem-'))
  const testnet = await startLocalTestnet(4)
  const workers = []
  t.after(async () => {
    for (const w of workers) await w.stop()
    await testnet.destroy()
    fs.rmSync(dir, { recursive: true, force: true })
  })
  const start = async (opts) => {
    const w = new ReferenceWorker({ bootstrap: testnet.bootstrap, storageDir: dir, logger: quiet(), telemetryIntervalMs: 0, ...opts })
    workers.push(w)
    await w.start()
    return w
  }
  const first = await start({ memoryStore: true })
  await first.stop()
  await assert.rejects(start({}), /hosts a memory-store relay/)
  const again = await start({ memoryStore: true })
  assert.equal(again.relayKey, first.relayKey)
})
