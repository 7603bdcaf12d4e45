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
