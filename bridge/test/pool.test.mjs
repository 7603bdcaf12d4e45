import test from 'node:test'
import assert from 'node:assert/strict'
import { EventEmitter } from 'node:events'
import { Duplex } from 'node:stream'
import { randomBytes } from 'node:crypto'
import { PeerPool } from '../src/pool/peer-pool.mjs'
import { RelayChannel, Router, LEGACY_RELAY_PROTOCOL, RELAY_PROTOCOL } from '../src/protocol/relay-protocol.mjs'
import { waitFor } from './helpers/procs.mjs'

/** Two in-memory ends of a message-preserving connection, shaped like Hyperswarm streams. */
function streamPair (localKey, remoteKey) {
  const ends = []
  const make = (self, other, pub, remotePub, initiator) => {
    const d = new Duplex({
      objectMode: true,
      read () {},
      write (chunk, _enc, cb) {
        const peer = ends[other]
        if (!peer.destroyed) {
          peer.rawBytesRead += chunk.length
          peer.push(chunk)
        }
        cb()
      }
    })
    d.userData = null
    d.rawBytesRead = 0
    d.publicKey = pub
    d.remotePublicKey = remotePub
    d.isInitiator = initiator
    d.on('close', () => { if (!ends[other].destroyed) ends[other].destroy() })
    d.on('error', () => {})
    ends[self] = d
  }
  make(0, 1, localKey, remoteKey, true)
  make(1, 0, remoteKey, localKey, false)
  return ends
}

function fakeSwarm () {
  const swarm = new EventEmitter()
  swarm.keyPair = { publicKey: randomBytes(32) }
  swarm.dht = { ready: async () => {} }
  swarm.listen = async () => {}
  swarm.connections = new Set()
  swarm.calls = []
  swarm.joinPeer = (k) => swarm.calls.push(['join', Buffer.from(k).toString('hex')])
  swarm.leavePeer = (k) => swarm.calls.push(['leave', Buffer.from(k).toString('hex')])
  return swarm
}

function quiet () {
  const noop = () => {}
  const l = { debug: noop, info: noop, warn: noop, error: noop }
  l.child = () => l
  return l
}

/** A worker end: one channel with the given protocol name and routes. */
function fakeWorker (stream, protocol, routes) {
  const router = new Router()
  for (const [method, p, fn] of routes) router.add(method, p, fn)
  const ch = RelayChannel.from(stream, { protocol, handshake: { role: 'relay-peer', isServer: true }, onrequest: (req) => router.handle(req) })
  ch.open()
  return ch
}

const identifyOk = ['POST', '/identify-gateway', () => ({ statusCode: 200, body: { status: 'identified' } })]

async function makePool (t, opts = {}) {
  const swarm = fakeSwarm()
  const pool = new PeerPool({ swarm, handshake: { role: 'gateway', isGateway: true }, logger: quiet(), healthIntervalMs: 0, ...opts })
  await pool.start()
  t.after(() => pool.close())
  return { swarm, pool }
}

test('a new connection that yields no data is dropped early and the wanted peer is dialled again', async (t) => {
  const { swarm, pool } = await makePool(t, { firstDataTimeoutMs: 150, handshakeTimeoutMs: 10_000, reconnectBaseMs: 20 })
  const workerKey = randomBytes(32)
  const hex = workerKey.toString('hex')
  const connecting = pool.connect(hex, { timeoutMs: 1500 })
  const [local] = streamPair(swarm.keyPair.publicKey, workerKey)
  swarm.emit('connection', local, {})
  await waitFor(() => local.destroyed, { timeoutMs: 2000, what: 'zombie stream destroyed' })
  const peer = pool.status().peers.find((p) => p.peerKey === hex)
  assert.equal(peer.lastReason, 'stalled')
  await waitFor(() => swarm.calls.filter(([op, k]) => op === 'join' && k === hex).length >= 2, { timeoutMs: 2000, what: 'redial' })
  await assert.rejects(connecting, (e) => e.code === 'peer-unavailable' && /no data/.test(e.message))
})

test('a legacy-protocol worker is served on the channel name it speaks', async (t) => {
  const inbound = []
  const { swarm, pool } = await makePool(t, {
    onInboundRequest: async ({ peerKey, protocol, request }) => {
      inbound.push({ peerKey, protocol, path: request.path, body: JSON.parse(request.body.toString()) })
      return { statusCode: 200, body: { status: 'ok' } }
    }
  })
  const workerKey = randomBytes(32)
  const hex = workerKey.toString('hex')
  const [local, remote] = streamPair(swarm.keyPair.publicKey, workerKey)
  const worker = fakeWorker(remote, LEGACY_RELAY_PROTOCOL, [
    identifyOk,
    ['GET', '/echo/:word', (req) => ({ statusCode: 200, body: { word: req.params.word, q: req.query.x } })]
  ])
  const connected = new Promise((resolve) => pool.once('connected', resolve))
  swarm.emit('connection', local, {})
  const ev = await connected
  assert.equal(ev.protocol, LEGACY_RELAY_PROTOCOL)
  assert.equal(ev.handshake.role, 'relay-peer')
  assert.equal(ev.initiator, 'local')
  const res = await pool.request(hex, { method: 'GET', path: '/echo/hi?x=1' })
  assert.equal(res.statusCode, 200)
  assert.deepEqual(JSON.parse(res.body.toString()), { word: 'hi', q: '1' })
  const reply = await worker.request({ method: 'POST', path: '/gateway/register', body: { publicKey: hex } })
  assert.equal(reply.statusCode, 200)
  assert.deepEqual(inbound, [{ peerKey: hex, protocol: LEGACY_RELAY_PROTOCOL, path: '/gateway/register', body: { publicKey: hex } }])
  const latency = await pool.health(hex)
  assert.ok(latency >= 0)
})

test('a worker refusing identification is disconnected with handshake-error', async (t) => {
  const { swarm, pool } = await makePool(t, { reconnectBaseMs: 10_000 })
  const workerKey = randomBytes(32)
  const hex = workerKey.toString('hex')
  const [local, remote] = streamPair(swarm.keyPair.publicKey, workerKey)
  fakeWorker(remote, RELAY_PROTOCOL, [['POST', '/identify-gateway', () => ({ statusCode: 409, body: { error: 'not-a-gateway-peer' } })]])
  let connected = false
  pool.on('connected', () => { connected = true })
  const attempt = pool.connect(hex, { timeoutMs: 800 }).catch((e) => e)
  swarm.emit('connection', local, {})
  await waitFor(() => local.destroyed, { timeoutMs: 2000, what: 'refused connection closed' })
  const peer = pool.status().peers.find((p) => p.peerKey === hex)
  assert.equal(peer.lastReason, 'handshake-error')
  assert.match(peer.lastError, /409/)
  assert.equal(connected, false)
  const err = await attempt
  assert.equal(err.code, 'peer-unavailable')
})

test('a worker going away is reported with the reason, and a health failure disconnects', async (t) => {
  const { swarm, pool } = await makePool(t, { healthTimeoutMs: 200, reconnectBaseMs: 10_000 })
  const keyA = randomBytes(32)
  const [localA, remoteA] = streamPair(swarm.keyPair.publicKey, keyA)
  fakeWorker(remoteA, RELAY_PROTOCOL, [identifyOk])
  const events = []
  pool.on('disconnected', (e) => events.push(e))
  swarm.emit('connection', localA, {})
  await pool.connect(keyA.toString('hex'), { timeoutMs: 2000 })
  remoteA.destroy()
  await waitFor(() => events.length === 1, { timeoutMs: 2000, what: 'disconnected event' })
  assert.equal(events[0].peerKey, keyA.toString('hex'))
  assert.equal(events[0].reason, 'stream-close')
  assert.equal(pool.status().peers[0].state, 'backoff', 'a wanted peer waits to be redialled')

  const keyB = randomBytes(32)
  const [localB, remoteB] = streamPair(swarm.keyPair.publicKey, keyB)
  const workerB = fakeWorker(remoteB, RELAY_PROTOCOL, [identifyOk])
  swarm.emit('connection', localB, {})
  await pool.connect(keyB.toString('hex'), { timeoutMs: 2000 })
  // Stop answering health checks: the worker side no longer processes incoming messages.
  workerB._onhealth = () => {}
  await assert.rejects(pool.health(keyB.toString('hex')), (e) => e.code === 'peer-timeout')
  await waitFor(() => events.length === 2, { timeoutMs: 2000, what: 'health disconnect' })
  assert.equal(events[1].reason, 'health-check-failed')
})

test('concurrent connects share one dial, and a lost wanted peer is dialled again and reconnects', async (t) => {
  const { swarm, pool } = await makePool(t, { reconnectBaseMs: 30 })
  const key = randomBytes(32)
  const hex = key.toString('hex')
  const joins = () => swarm.calls.filter(([op, k]) => op === 'join' && k === hex).length
  const a = pool.connect(hex, { timeoutMs: 2000 })
  const b = pool.connect(hex, { timeoutMs: 2000 })
  assert.equal(joins(), 1)
  const [local1, remote1] = streamPair(swarm.keyPair.publicKey, key)
  fakeWorker(remote1, RELAY_PROTOCOL, [identifyOk])
  swarm.emit('connection', local1, {})
  const [ea, eb] = await Promise.all([a, b])
  assert.equal(ea, eb)
  let connects = 0
  pool.on('connected', () => connects++)
  remote1.destroy()
  await waitFor(() => joins() >= 2, { timeoutMs: 2000, what: 'redial after loss' })
  const [local2, remote2] = streamPair(swarm.keyPair.publicKey, key)
  fakeWorker(remote2, RELAY_PROTOCOL, [identifyOk])
  swarm.emit('connection', local2, {})
  await waitFor(() => connects === 1, { timeoutMs: 2000, what: 'reconnected' })
  const status = pool.status().peers.find((p) => p.peerKey === hex)
  assert.equal(status.state, 'ready')
  assert.equal(status.reconnectAttempts, 0)
  assert.equal(pool.disconnect(hex), true)
  await waitFor(() => pool.status().peers.length === 0, { timeoutMs: 2000, what: 'peer forgotten after disconnect' })
  assert.ok(swarm.calls.some(([op, k]) => op === 'leave' && k === hex))
})

test('an overdue request sends a health check: a silent worker is disconnected at once, a slow one is kept', async (t) => {
  const { swarm, pool } = await makePool(t, { overdueProbeMs: 100, overdueProbeTimeoutMs: 200, reconnectBaseMs: 10_000 })
  const events = []
  pool.on('disconnected', (e) => events.push(e))

  // Slow but alive: the request takes 600 ms, health checks are answered meanwhile.
  const slowKey = randomBytes(32)
  const [localSlow, remoteSlow] = streamPair(swarm.keyPair.publicKey, slowKey)
  const slowAnswer = ['GET', '/slow', async () => {
    await new Promise((resolve) => setTimeout(resolve, 600))
    return { statusCode: 200, body: { ok: true } }
  }]
  fakeWorker(remoteSlow, RELAY_PROTOCOL, [identifyOk, slowAnswer])
  swarm.emit('connection', localSlow, {})
  await pool.connect(slowKey.toString('hex'), { timeoutMs: 2000 })
  const slow = await pool.request(slowKey.toString('hex'), { method: 'GET', path: '/slow', timeoutMs: 5000 })
  assert.equal(slow.statusCode, 200)
  assert.equal(pool.status().peers.find((p) => p.peerKey === slowKey.toString('hex')).state, 'ready')
  assert.equal(pool.status().peers.find((p) => p.peerKey === slowKey.toString('hex')).lastHealth.ok, true)

  // Silent: the connection stays open but nothing answers (a killed process on a transport that never closes).
  const silentKey = randomBytes(32)
  const [localSilent, remoteSilent] = streamPair(swarm.keyPair.publicKey, silentKey)
  const never = ['GET', '/never', () => new Promise(() => {})]
  const silent = fakeWorker(remoteSilent, RELAY_PROTOCOL, [identifyOk, never])
  swarm.emit('connection', localSilent, {})
  await pool.connect(silentKey.toString('hex'), { timeoutMs: 2000 })
  silent._onhealth = () => {}
  const started = Date.now()
  await assert.rejects(
    pool.request(silentKey.toString('hex'), { method: 'GET', path: '/never', timeoutMs: 10_000 }),
    (e) => e.code === 'peer-unavailable'
  )
  const took = Date.now() - started
  assert.ok(took < 2000, `failed after ${took} ms, not at the 10 s request timeout`)
  assert.deepEqual(events.map((e) => [e.peerKey, e.reason]), [[silentKey.toString('hex'), 'health-check-failed']])
})

test('overdue probes can be switched off', async (t) => {
  const { swarm, pool } = await makePool(t, { overdueProbeMs: 0 })
  const key = randomBytes(32)
  const [local, remote] = streamPair(swarm.keyPair.publicKey, key)
  const worker = fakeWorker(remote, RELAY_PROTOCOL, [identifyOk, ['GET', '/never', () => new Promise(() => {})]])
  swarm.emit('connection', local, {})
  await pool.connect(key.toString('hex'), { timeoutMs: 2000 })
  worker._onhealth = () => {}
  await assert.rejects(
    pool.request(key.toString('hex'), { method: 'GET', path: '/never', timeoutMs: 400 }),
    (e) => e.code === 'peer-timeout'
  )
  assert.equal(pool.status().peers[0].state, 'ready')
})
