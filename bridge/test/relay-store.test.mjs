import test from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import Corestore from 'corestore'
import Hyperbee from 'hyperbee'
import b4a from 'b4a'
import { RelayStore, indexKeys } from '../src/worker/relay-store.mjs'
import { signEvent, randomSecretKeyHex, verifyEvent, npubFromHex, hexFromNpubOrHex, computeEventId } from '../src/worker/nostr.mjs'

const T0 = 1763683200

async function openRelay (t) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ht-relay-'))
  const store = new Corestore(dir)
  const relay = new RelayStore(store)
  await relay.ready()
  t.after(async () => {
    await relay.close()
    await store.close()
    fs.rmSync(dir, { recursive: true, force: true })
  })
  return relay
}

test('event verification checks the id and the Schnorr signature', () => {
  const sk = randomSecretKeyHex()
  const ev = signEvent({ kind: 1, content: 'hi', created_at: T0 }, sk)
  assert.equal(verifyEvent(ev), null)
  assert.match(verifyEvent({ ...ev, content: 'tampered' }), /^invalid: event id/)
  const other = signEvent({ kind: 1, content: 'hi', created_at: T0 }, randomSecretKeyHex())
  assert.match(verifyEvent({ ...ev, sig: other.sig }), /^invalid: bad signature/)
  assert.match(verifyEvent({ ...ev, kind: 'x' }), /^invalid: kind/)
  const forged = { ...ev, pubkey: other.pubkey }
  forged.id = computeEventId(forged)
  assert.match(verifyEvent(forged), /^invalid: bad signature/)
})

test('npub encoding round-trips', () => {
  const hex = '3bf0c63fcb93463407af97a5e5ee64fa883d107ef9e558472c4eb9aaaefa459d'
  assert.equal(npubFromHex(hex), 'npub180cvv07tjdrrgpa0j7j7tmnyl2yr6yr7l8j4s3evf6u64th6gkwsyjh6w6')
  assert.equal(hexFromNpubOrHex(npubFromHex(hex)), hex)
  assert.throws(() => hexFromNpubOrHex('npub1invalid'))
})

test('REQ semantics: newest first, limit keeps the newest, since/until inclusive', async (t) => {
  const relay = await openRelay(t)
  const sk = randomSecretKeyHex()
  for (let i = 0; i < 6; i++) await relay.putEvent(signEvent({ kind: 1, content: `n${i}`, created_at: T0 + i, tags: [['t', 'x']] }, sk))
  const content = (evs) => evs.map((e) => e.content)
  assert.deepEqual(content(await relay.query({ kinds: [1], limit: 2 })), ['n5', 'n4'])
  assert.deepEqual(content(await relay.query({ since: T0 + 1, until: T0 + 3 })), ['n3', 'n2', 'n1'])
  assert.deepEqual(content(await relay.query({ '#t': ['x'], until: T0 + 2, limit: 10 })), ['n2', 'n1', 'n0'])
  assert.deepEqual(content(await relay.query({ '#t': ['nope'] })), [])
  assert.deepEqual(content(await relay.query({ kinds: [1], limit: 0 })), [])
  const one = (await relay.query({ kinds: [1], limit: 1 }))[0]
  assert.deepEqual(content(await relay.query({ ids: [one.id, 'f'.repeat(64)] })), ['n5'])
  assert.deepEqual(content(await relay.queryFilters([{ limit: 1 }, { kinds: [1], limit: 2 }])), ['n5', 'n4'])
})

test('replaceable and addressable events: only the newest version is returned', async (t) => {
  const relay = await openRelay(t)
  const sk = randomSecretKeyHex()
  await relay.putEvent(signEvent({ kind: 0, content: 'old', created_at: T0 }, sk))
  await relay.putEvent(signEvent({ kind: 0, content: 'new', created_at: T0 + 5 }, sk))
  await relay.putEvent(signEvent({ kind: 30023, content: 'a1', created_at: T0, tags: [['d', 'a']] }, sk))
  await relay.putEvent(signEvent({ kind: 30023, content: 'a2', created_at: T0 + 1, tags: [['d', 'a']] }, sk))
  await relay.putEvent(signEvent({ kind: 30023, content: 'b1', created_at: T0, tags: [['d', 'b']] }, sk))
  const content = (evs) => evs.map((e) => e.content)
  assert.deepEqual(content(await relay.query({ kinds: [0] })), ['new'])
  assert.deepEqual(content(await relay.query({ kinds: [30023] })).sort(), ['a2', 'b1'])
})

test('ephemeral events are not stored, duplicates are reported', async (t) => {
  const relay = await openRelay(t)
  const sk = randomSecretKeyHex()
  const eph = signEvent({ kind: 20001, content: 'e', created_at: T0 }, sk)
  assert.deepEqual(await relay.putEvent(eph), { stored: false, duplicate: false, ephemeral: true })
  assert.equal(await relay.getEvent(eph.id), null)
  const ev = signEvent({ kind: 1, content: 'x', created_at: T0 }, sk)
  assert.equal((await relay.putEvent(ev)).stored, true)
  assert.equal((await relay.putEvent(ev)).duplicate, true)
})

test('the view has the worker layout: raw id keys, index keys, c.any-tagged values', async (t) => {
  const relay = await openRelay(t)
  const sk = randomSecretKeyHex()
  const ev = signEvent({ kind: 7, content: 'layout', created_at: T0, tags: [['e', 'a'.repeat(64)], ['xx', 'ignored']] }, sk)
  await relay.putEvent(ev)
  const raw = new Hyperbee(relay.view.core, { extension: false })
  const eventNode = await raw.get(b4a.from(ev.id, 'hex'))
  assert.equal(eventNode.value[0], 0x02, 'string values carry the c.any string tag')
  const expected = [
    `kind:00007:created_at:${T0}:id:${ev.id}`,
    `pubkey:${ev.pubkey}:created_at:${String(T0).padStart(10, '0')}:id:${ev.id}`,
    `created_at:${String(T0).padStart(10, '0')}:id:${ev.id}`,
    `tagKey:e:tagValue:${'a'.repeat(64)}:created_at:${String(T0).padStart(10, '0')}:id:${ev.id}`
  ]
  assert.deepEqual(indexKeys(ev), expected)
  for (const key of expected) {
    const node = await relay.view.get(b4a.from(key, 'utf8'))
    assert.equal(node && node.value, ev.id, key)
  }
  assert.equal(JSON.parse((await relay.view.get(b4a.from(ev.id, 'hex'))).value).content, 'layout')
})

test('NIP-09: a kind-5 from the author hides the events it names by id; others cannot delete', async (t) => {
  const relay = await openRelay(t)
  const alice = randomSecretKeyHex()
  const mallory = randomSecretKeyHex()
  const doomed = signEvent({ kind: 1, content: 'doomed', created_at: T0, tags: [['t', 'x']] }, alice)
  const kept = signEvent({ kind: 1, content: 'kept', created_at: T0 + 1, tags: [['t', 'x']] }, alice)
  const targeted = signEvent({ kind: 1, content: 'targeted by mallory', created_at: T0 + 2 }, alice)
  for (const ev of [doomed, kept, targeted]) await relay.putEvent(ev)
  const deletion = signEvent({ kind: 5, content: '', created_at: T0 + 10, tags: [['e', doomed.id]] }, alice)
  const forged = signEvent({ kind: 5, content: '', created_at: T0 + 11, tags: [['e', targeted.id], ['e', kept.id]] }, mallory)
  // A deletion of a deletion has no effect (NIP-09).
  const undo = signEvent({ kind: 5, content: '', created_at: T0 + 12, tags: [['e', deletion.id]] }, alice)
  for (const ev of [deletion, forged, undo]) await relay.putEvent(ev)
  const content = (evs) => evs.map((e) => e.content || `kind${e.kind}:${e.id.slice(0, 4)}`)
  const ids = (evs) => evs.map((e) => e.id)

  assert.deepEqual(ids(await relay.query({ kinds: [1] })), [targeted.id, kept.id])
  assert.deepEqual(ids(await relay.query({ ids: [doomed.id, kept.id] })), [kept.id])
  assert.deepEqual(ids(await relay.query({ authors: [doomed.pubkey], kinds: [1] })), [targeted.id, kept.id])
  assert.deepEqual(ids(await relay.query({ '#t': ['x'] })), [kept.id])
  assert.deepEqual(ids(await relay.query({ since: T0, until: T0 })), [])
  // The deletion requests themselves stay visible, all three of them.
  assert.deepEqual(ids(await relay.query({ kinds: [5] })), [undo.id, forged.id, deletion.id])
  assert.deepEqual(ids(await relay.query({ ids: [deletion.id] })), [deletion.id])
  assert.equal(content(await relay.query({ kinds: [1], limit: 1 }))[0], 'targeted by mallory')

  // Publishing the deleted event again stores nothing new and shows nothing.
  assert.equal((await relay.putEvent(doomed)).duplicate, true)
  assert.deepEqual(ids(await relay.query({ ids: [doomed.id] })), [])
  // A deletion that arrives before its target still hides it.
  const early = signEvent({ kind: 1, content: 'late', created_at: T0 + 3 }, alice)
  await relay.putEvent(signEvent({ kind: 5, content: '', created_at: T0 + 13, tags: [['e', early.id]] }, alice))
  const res = await relay.putEvent(early)
  assert.equal(res.stored, true)
  assert.equal(res.visible, false)
  assert.deepEqual(ids(await relay.query({ ids: [early.id] })), [])
})

test('NIP-09: an a-tag deletion hides the versions of that address up to its created_at', async (t) => {
  const relay = await openRelay(t)
  const alice = randomSecretKeyHex()
  const mallory = randomSecretKeyHex()
  const v1 = signEvent({ kind: 30023, content: 'v1', created_at: T0, tags: [['d', 'post']] }, alice)
  const other = signEvent({ kind: 30023, content: 'other d', created_at: T0, tags: [['d', 'other']] }, alice)
  const profile = signEvent({ kind: 0, content: 'profile', created_at: T0 }, alice)
  for (const ev of [v1, other, profile]) await relay.putEvent(ev)
  const address = `30023:${v1.pubkey}:post`
  await relay.putEvent(signEvent({ kind: 5, content: '', created_at: T0 + 5, tags: [['a', address]] }, alice))
  // Mallory cannot delete Alice's address, nor Alice's profile.
  await relay.putEvent(signEvent({ kind: 5, content: '', created_at: T0 + 6, tags: [['a', `30023:${v1.pubkey}:other`], ['a', `0:${v1.pubkey}:`]] }, mallory))
  const ids = (evs) => evs.map((e) => e.id)
  assert.deepEqual(ids(await relay.query({ kinds: [30023] })), [other.id])
  assert.deepEqual(ids(await relay.query({ ids: [v1.id] })), [])
  assert.deepEqual(ids(await relay.query({ kinds: [0] })), [profile.id])

  // A version newer than the deletion is shown again; one at the deletion's second is not.
  const same = signEvent({ kind: 30023, content: 'same second', created_at: T0 + 5, tags: [['d', 'post']] }, alice)
  assert.equal((await relay.putEvent(same)).visible, false)
  const v3 = signEvent({ kind: 30023, content: 'v3', created_at: T0 + 7, tags: [['d', 'post']] }, alice)
  assert.equal((await relay.putEvent(v3)).visible, true)
  assert.deepEqual(ids(await relay.query({ kinds: [30023], '#d': ['post'] })), [v3.id])

  // A replaceable kind's address has an empty d part.
  await relay.putEvent(signEvent({ kind: 5, content: '', created_at: T0 + 8, tags: [['a', `0:${v1.pubkey}:`]] }, alice))
  assert.deepEqual(ids(await relay.query({ kinds: [0] })), [])
})

test('a superseded replaceable or addressable version is not returned, by id or by any filter', async (t) => {
  const relay = await openRelay(t)
  const sk = randomSecretKeyHex()
  const old = signEvent({ kind: 0, content: 'old', created_at: T0, tags: [['t', 'old-only']] }, sk)
  const cur = signEvent({ kind: 0, content: 'new', created_at: T0 + 5 }, sk)
  await relay.putEvent(old)
  assert.equal((await relay.putEvent(cur)).visible, true)
  const ids = (evs) => evs.map((e) => e.id)
  assert.deepEqual(ids(await relay.query({ ids: [old.id] })), [])
  assert.deepEqual(ids(await relay.query({ ids: [old.id, cur.id] })), [cur.id])
  // The old version matches this tag filter and the current one does not: still nothing.
  assert.deepEqual(ids(await relay.query({ '#t': ['old-only'] })), [])
  assert.deepEqual(ids(await relay.queryFilters([{ ids: [old.id] }, { authors: [old.pubkey] }])), [cur.id])

  // An older version arriving later is stored but hidden at once.
  const older = signEvent({ kind: 0, content: 'older', created_at: T0 - 5 }, sk)
  const res = await relay.putEvent(older)
  assert.equal(res.stored, true)
  assert.equal(res.visible, false)
  assert.deepEqual(ids(await relay.query({ kinds: [0] })), [cur.id])

  // Same second: the lowest id wins (NIP-01), by id as well.
  const [a, b] = [0, 1].map((i) => signEvent({ kind: 30000, content: `tie${i}`, created_at: T0, tags: [['d', 'tie']] }, sk))
  const [low, high] = a.id < b.id ? [a, b] : [b, a]
  await relay.putEvent(low)
  assert.equal((await relay.putEvent(high)).visible, false)
  assert.deepEqual(ids(await relay.query({ ids: [high.id, low.id] })), [low.id])
  assert.deepEqual(ids(await relay.query({ kinds: [30000] })), [low.id])
})
