import test from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { createHash, randomBytes } from 'node:crypto'
import { ReferenceWorker, camelCase } from '../src/worker/worker.mjs'
import { quiet, startTestWorker } from './helpers/worker.mjs'
import { startLocalTestnet } from '../src/swarm/bootstrap.mjs'
import { signEvent, randomSecretKeyHex } from '../src/worker/nostr.mjs'

function startWorker (t, opts = {}) {
  return startTestWorker(t, opts)
}

/** Drive the worker's router the way a gateway channel would. */
function call (worker, { method = 'GET', path: p, headers = {}, body = null, peerKey = 'ab'.repeat(32) }) {
  const q = p.indexOf('?')
  return worker.router.handle({
    method,
    path: q === -1 ? p : p.slice(0, q),
    query: {},
    headers,
    body: body === null ? Buffer.alloc(0) : Buffer.from(typeof body === 'string' ? body : JSON.stringify(body)),
    channel: { remoteHandshake: {}, closed: false, sendWsFrame: () => false },
    peerKey
  })
}

function lines (res) {
  const text = Buffer.isBuffer(res.body) ? res.body.toString() : JSON.stringify(res.body)
  return text === '' ? [] : text.split('\n').map((l) => JSON.parse(l))
}

test('relay names become camelCase path segments', () => {
  assert.equal(camelCase('My Demo relay'), 'myDemoRelay')
  assert.equal(camelCase('demo'), 'demo')
  assert.equal(camelCase('  '), 'relay')
})

test('with requiresAuth, REQ needs a known token and EVENT a token of the signing pubkey', async (t) => {
  const sk = randomSecretKeyHex()
  const { worker } = await startWorker(t, { requiresAuth: true, name: 'private' })
  const ev = signEvent({ kind: 1, content: 'hi' }, sk)
  const post = (message, headers = {}) => call(worker, {
    method: 'POST',
    path: `/post/relay/${worker.relayKey}`,
    headers,
    body: { message: JSON.stringify(message), connectionKey: 'cd'.repeat(16) }
  })
  const noToken = await post(['REQ', 's', {}])
  assert.equal(noToken.statusCode, 403)
  assert.deepEqual(lines(noToken), [['NOTICE', 'Authentication required for read access']])
  const badToken = await post(['REQ', 's', {}], { 'x-auth-token': 'nope' })
  assert.equal(badToken.statusCode, 403)
  assert.deepEqual(lines(badToken), [['NOTICE', 'Invalid authentication']])

  const token = worker.addAuthToken(ev.pubkey)
  const ok = await post(['REQ', 's', {}], { 'x-auth-token': token })
  assert.equal(ok.statusCode, 200)
  assert.deepEqual(lines(ok), [['EOSE', 's']])

  assert.match(lines(await post(['EVENT', ev]))[0][3], /^auth-required:/)
  const otherToken = worker.addAuthToken('ee'.repeat(32))
  assert.match(lines(await post(['EVENT', ev], { 'x-auth-token': otherToken }))[0][3], /pubkey mismatch/)
  assert.deepEqual(lines(await post(['EVENT', ev], { 'x-auth-token': token })), [['OK', ev.id, true, '']])
  assert.deepEqual(lines(await post(['EVENT', ev], { 'x-auth-token': token })), [['OK', ev.id, true, 'duplicate: already have this event']])

  const poll = await call(worker, { path: `/get/relay/${worker.relayKey}/${'cd'.repeat(16)}` })
  assert.deepEqual(poll.body, [['NOTICE', 'Authentication required for read access']])
  const saved = JSON.parse(fs.readFileSync(path.join(worker.storageDir, 'auth-tokens.json'), 'utf8'))
  assert.ok(saved.tokens.some((x) => x.token === token && x.pubkey === ev.pubkey))
  assert.equal(fs.statSync(path.join(worker.storageDir, 'auth-tokens.json')).mode & 0o777, 0o600)
})

test('identifiers, bad bodies, CLOSE and unsupported frames', async (t) => {
  const { worker } = await startWorker(t, { name: 'open relay' })
  assert.match(worker.identifier, /^npub1[0-9a-z]+:openRelay$/)
  const body = (message, connectionKey = 'ef'.repeat(16)) => ({ message: JSON.stringify(message), connectionKey })
  for (const id of [worker.relayKey, encodeURIComponent(worker.identifier), encodeURIComponent(worker.gatewayPath)]) {
    const res = await call(worker, { method: 'POST', path: `/post/relay/${id}`, body: body(['REQ', 'a', { kinds: [1] }]) })
    assert.equal(res.statusCode, 200, id)
  }
  const unknown = await call(worker, { method: 'POST', path: `/post/relay/${'0'.repeat(64)}`, body: body(['REQ', 'a', {}]) })
  assert.equal(unknown.statusCode, 404)
  const notJson = await call(worker, { method: 'POST', path: `/post/relay/${worker.relayKey}`, body: '{oops' })
  assert.equal(notJson.statusCode, 400)
  const badKey = await call(worker, { method: 'POST', path: `/post/relay/${worker.relayKey}`, body: body(['REQ', 'a', {}], 'XYZ') })
  assert.equal(badKey.statusCode, 400)
  const badFilter = await call(worker, { method: 'POST', path: `/post/relay/${worker.relayKey}`, body: body(['REQ', 'b', { kinds: 'x' }]) })
  assert.deepEqual(lines(badFilter), [['CLOSED', 'b', 'invalid: kinds must be a list of integers']])
  const auth = await call(worker, { method: 'POST', path: `/post/relay/${worker.relayKey}`, body: body(['AUTH', {}]) })
  assert.match(lines(auth)[0][1], /^unsupported:/)
  const wrongMethod = await call(worker, { method: 'GET', path: `/post/relay/${worker.relayKey}` })
  assert.equal(wrongMethod.statusCode, 405)

  // A closed subscription gets no more live events.
  const ck = '12'.repeat(16)
  await call(worker, { method: 'POST', path: `/post/relay/${worker.relayKey}`, body: body(['REQ', 'live', { kinds: [1] }], ck) })
  await new Promise((resolve) => setImmediate(resolve))
  const closed = await call(worker, { method: 'POST', path: `/post/relay/${worker.relayKey}`, body: body(['CLOSE', 'live'], ck) })
  assert.equal(closed.statusCode, 200)
  assert.deepEqual(lines(closed), [])
  const sk = randomSecretKeyHex()
  await call(worker, { method: 'POST', path: `/post/relay/${worker.relayKey}`, body: body(['EVENT', signEvent({ kind: 1, content: 'after close' }, sk)]) })
  const poll = await call(worker, { path: `/get/relay/${worker.relayKey}/${ck}` })
  assert.deepEqual(poll.body, [])
})

test('events stored while a REQ is being answered are delivered once, after EOSE', async (t) => {
  const { worker } = await startWorker(t)
  const sk = randomSecretKeyHex()
  const ck = '34'.repeat(16)
  const reqBody = { message: JSON.stringify(['REQ', 's', { kinds: [1] }]), connectionKey: ck }
  const racing = signEvent({ kind: 1, content: 'racing' }, sk)
  const [req] = await Promise.all([
    call(worker, { method: 'POST', path: `/post/relay/${worker.relayKey}`, body: reqBody }),
    worker.relay.putEvent(racing)
  ])
  await new Promise((resolve) => setImmediate(resolve))
  const fromReq = lines(req).filter((f) => f[0] === 'EVENT').map((f) => f[2].id)
  const poll = await call(worker, { path: `/get/relay/${worker.relayKey}/${ck}` })
  const fromPoll = poll.body.filter((f) => f[0] === 'EVENT').map((f) => f[2].id)
  assert.deepEqual([...fromReq, ...fromPoll], [racing.id], 'exactly once, through one of the two paths')
})

test('drive files: etag revalidation, OPTIONS, HEAD and unknown relays', async (t) => {
  const src = fs.mkdtempSync(path.join(os.tmpdir(), 'ht-files-'))
  t.after(() => fs.rmSync(src, { recursive: true, force: true }))
  const bytes = randomBytes(5000)
  fs.writeFileSync(path.join(src, 'a.txt'), bytes)
  const sha = createHash('sha256').update(bytes).digest('hex')
  const { worker } = await startWorker(t, { driveImport: src })
  assert.deepEqual(worker.imported.map((f) => f.hash), [sha])
  const p = `/drive/${encodeURIComponent(worker.identifier)}/${sha}.txt`
  const got = await call(worker, { path: p })
  assert.equal(got.statusCode, 200)
  assert.equal(got.headers['content-type'], 'text/plain')
  assert.ok(Buffer.from(got.body).equals(bytes))
  const again = await call(worker, { path: p, headers: { 'if-none-match': `"${sha}"` } })
  assert.equal(again.statusCode, 304)
  const head = await call(worker, { method: 'HEAD', path: p })
  assert.equal(head.statusCode, 200)
  assert.equal(head.body, null)
  assert.equal((await call(worker, { method: 'OPTIONS', path: p })).statusCode, 204)
  assert.equal((await call(worker, { path: `/drive/${'0'.repeat(64)}/${sha}` })).statusCode, 404)
  assert.equal((await call(worker, { path: `/drive/${worker.relayKey}/${sha}` })).statusCode, 200)
})

test('restarting on the same storage keeps the relay key, the swarm key and the events', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ht-worker-'))
  const testnet = await startLocalTestnet(4)
  t.after(async () => {
    await testnet.destroy()
    fs.rmSync(dir, { recursive: true, force: true })
  })
  const opts = { bootstrap: testnet.bootstrap, storageDir: dir, logger: quiet(), telemetryIntervalMs: 0 }
  const first = new ReferenceWorker(opts)
  await first.start()
  const ev = signEvent({ kind: 1, content: 'kept' }, randomSecretKeyHex())
  await first.relay.putEvent(ev)
  const keys = [first.relayKey, first.swarmPublicKey, first.identifier]
  await first.stop()
  const second = new ReferenceWorker(opts)
  await second.start()
  t.after(() => second.stop())
  assert.deepEqual([second.relayKey, second.swarmPublicKey, second.identifier], keys)
  assert.equal((await second.relay.getEvent(ev.id)).content, 'kept')
  assert.equal(second.relay.base.writable, true)
})

test('live subscribers never see a superseded version or a deleted event', async (t) => {
  const { worker } = await startWorker(t, { wsPush: false })
  const sk = randomSecretKeyHex()
  const ck = '56'.repeat(16)
  const post = (message) => call(worker, {
    method: 'POST',
    path: `/post/relay/${worker.relayKey}`,
    body: { message: JSON.stringify(message), connectionKey: ck }
  })
  await post(['REQ', 'live', { kinds: [0, 1, 5] }])
  await new Promise((resolve) => setImmediate(resolve))
  const now = Math.floor(Date.now() / 1000)
  const profile = signEvent({ kind: 0, content: 'current', created_at: now }, sk)
  const stale = signEvent({ kind: 0, content: 'stale', created_at: now - 60 }, sk)
  const note = signEvent({ kind: 1, content: 'note', created_at: now }, sk)
  const deletion = signEvent({ kind: 5, content: '', created_at: now, tags: [['e', note.id]] }, sk)
  for (const ev of [profile, stale, deletion, note]) {
    assert.equal(lines(await post(['EVENT', ev]))[0][2], true)
  }
  const poll = await call(worker, { path: `/get/relay/${worker.relayKey}/${ck}` })
  const live = poll.body.filter((f) => f[0] === 'EVENT' && f[1] === 'live').map((f) => f[2].id)
  assert.deepEqual(live, [profile.id, deletion.id])
})
