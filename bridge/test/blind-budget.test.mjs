import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { randomBytes } from 'node:crypto'
import { BlindPeerService } from '../src/blind/blind-peer.mjs'
import { startLocalTestnet } from '../src/swarm/bootstrap.mjs'
import { waitFor } from './helpers/procs.mjs'

// The byte budget on a real blind peer (in process, loopback testnet): cores are written straight into
// its store with records as blind-peer's add-core writes them, so its own flush() runs the budget.

const KB = 1024
const BUDGET = 50 * KB
const quiet = { info () {}, warn () {} }
const hex = (buf) => Buffer.from(buf).toString('hex')

async function startService (dir, bootstrap, seed) {
  const svc = new BlindPeerService({ storageDir: dir, bootstrap, host: '127.0.0.1', seed, maxBytes: BUDGET, staleMs: 3600_000, progressIntervalMs: 60_000, logger: quiet })
  const events = []
  for (const name of ['mirror.added', 'mirror.removed']) svc.on(name, (data) => events.push({ name, data }))
  await svc.start()
  return { svc, events }
}

/** A core the blind peer holds, as if a worker had added it with `priority` under `referrer`. */
async function mirrored (svc, name, priority, referrer) {
  const core = svc.bp.store.get({ name })
  await core.ready()
  svc.bp.db.addCore({ key: core.key, priority, announce: false, referrer })
  await svc.bp.flush()
  // What blind-peer's _activateCore does for an added core: its tracker picks up the new record.
  const tracker = svc.bp.activeReplication.get(hex(core.discoveryKey))
  await tracker.refresh()
  assert.ok(tracker.record, `${name} is tracked`)
  return core
}

async function fill (core, bytes) {
  for (let i = 0; i < bytes / KB; i++) await core.append(randomBytes(KB))
}

test('the byte budget clears priority-0 cores only, never a relay view or writer, and says so', { timeout: 60_000 }, async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ht-budget-'))
  const testnet = await startLocalTestnet(4)
  const seed = randomBytes(32)
  let { svc, events } = await startService(dir, testnet.bootstrap, seed)
  t.after(async () => {
    await svc.stop()
    await testnet.destroy()
    fs.rmSync(dir, { recursive: true, force: true })
  })
  const relay = randomBytes(32)

  // The relay's view, mirrored at priority 0 (as a worker that gives no priority does): protected once
  // the replica reader resolved it as the relay's view.
  const view = await mirrored(svc, 'view', 0, relay)
  const bee = new svc.m.Hyperbee(view, { keyEncoding: 'binary', valueEncoding: 'binary' })
  for (let i = 0; i < 30; i++) await bee.put(Buffer.from(`created_at:${String(i).padStart(4, '0')}`), randomBytes(KB))
  await waitFor(async () => (await svc.bp.db.getCoreRecord(view.key)).bytesAllocated >= 30 * KB, { what: 'view bytes' })
  assert.deepEqual(await svc.resolveViewCore(hex(relay)), view.key)
  const viewLength = view.length

  const writer = await mirrored(svc, 'writer', 1, relay)
  await fill(writer, 30 * KB) // over budget now, and nothing may be cleared yet
  await waitFor(() => svc.budget.overBudget, { what: 'over budget' })
  assert.equal(events.filter((e) => e.name === 'mirror.removed').length, 0)

  const blobs = await mirrored(svc, 'blobs', 0, relay)
  await fill(blobs, 30 * KB)
  // Over budget, every flush clears the blobs core again, up to its length at that moment.
  const removals = () => events.filter((e) => e.name === 'mirror.removed')
  const last = await waitFor(() => removals().find((e) => e.data.blocksCleared === blobs.length), { what: 'blobs cleared to its end' })
  assert.deepEqual(new Set(removals().map((e) => `${e.data.coreKey} ${e.data.reason}`)), new Set([`${hex(blobs.key)} gc-bytes`]))
  assert.ok(last.data.bytesCleared >= 30 * KB, JSON.stringify(last.data))
  assert.equal(await svc.heldLength(blobs.key), 0, 'the blobs history is gone')
  assert.equal(await svc.heldLength(view.key), viewLength, 'the view is whole')
  assert.equal(await svc.heldLength(writer.key), writer.length, 'the writer is whole')
  const read = await svc.readView({ relayKey: hex(relay), viewCoreKey: null, startSeq: 0, limit: 1000 })
  assert.equal(read.length, viewLength)
  const status = await svc.status()
  assert.equal(status.gc.budget.overBudget, true, 'priority >= 1 and the view alone exceed the budget')
  assert.equal(status.gc.budget.clearedCores, 1)

  // The worker adds the cleared core again: its history is still gone, and the gateway is told again.
  events.length = 0
  svc._onAddCore({ key: blobs.key, referrer: relay, priority: 0 }, null)
  assert.deepEqual(events.map((e) => [e.name, e.data.coreKey, e.data.reason]), [['mirror.added', hex(blobs.key), undefined], ['mirror.removed', hex(blobs.key), 'gc-bytes']])

  // A restart remembers it (blind-peer keeps blocksCleared in the record) ...
  await Promise.all([view.close(), writer.close(), blobs.close(), bee.close()])
  await svc.stop()
  ;({ svc, events } = await startService(dir, testnet.bootstrap, seed))
  svc._onAddCore({ key: blobs.key, referrer: relay, priority: 0 }, null)
  assert.deepEqual(events.map((e) => [e.name, e.data.reason]), [['mirror.added', undefined], ['mirror.removed', 'gc-bytes']])
  // ... until the record is deleted: the next add mirrors the core from block 0, nothing more to say.
  assert.equal((await svc.deleteCore(hex(blobs.key), 'operator')).deleted, true)
  assert.equal(events.at(-1).data.reason, 'operator')
  events.length = 0
  svc._onAddCore({ key: blobs.key, referrer: relay, priority: 0 }, null)
  assert.deepEqual(events.map((e) => e.name), ['mirror.added'])
})
