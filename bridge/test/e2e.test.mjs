import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import http from 'node:http'
import { createHash } from 'node:crypto'
import { spawnReady, stopProcess, waitFor } from './helpers/procs.mjs'
import { TestRpcClient, ndjson } from './helpers/rpc-client.mjs'
import { stableStringify, hmacHex, signatureMatches } from '../src/lib/canonical.mjs'
import { signEvent, randomSecretKeyHex } from '../src/worker/nostr.mjs'

const SECRET = 'e2e-shared-secret'

/** A stand-in for the gateway's HTTP API that checks signatures the way the gateway must. */
function startFakeGateway () {
  const registrations = []
  const tokenCalls = []
  const server = http.createServer((req, res) => {
    let body = ''
    req.on('data', (d) => { body += d })
    req.on('end', () => {
      let json
      try {
        json = JSON.parse(body)
      } catch {
        res.writeHead(400).end('{"error":"invalid-json"}')
        return
      }
      const send = (code, obj) => {
        res.writeHead(code, { 'content-type': 'application/json' })
        res.end(JSON.stringify(obj))
      }
      if (req.url === '/api/relays' && req.method === 'POST') {
        const valid = signatureMatches(hmacHex(SECRET, stableStringify(json.registration)), json.signature)
        registrations.push({ ...json, valid })
        // The 'beta' relay meets a gateway that is still starting: its first two attempts fail.
        if (json.registration.metadata.name === 'beta' && registrations.filter((r) => r.registration.metadata.name === 'beta').length <= 2) {
          return send(503, { error: 'starting' })
        }
        return valid ? send(200, { status: 'ok', hyperbee: null }) : send(401, { error: 'invalid-signature' })
      }
      if (req.url === '/api/relay-tokens/issue' && req.method === 'POST') {
        const valid = signatureMatches(hmacHex(SECRET, stableStringify(json.payload)), json.signature)
        tokenCalls.push({ ...json, valid })
        return valid ? send(200, { token: 'tok.' + json.payload.relayAuthToken.slice(0, 8), expiresAt: Date.now() + 3600_000, sequence: 1 }) : send(401, { error: 'invalid-signature' })
      }
      send(404, { error: 'not-found' })
    })
  })
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => resolve({ server, url: `http://127.0.0.1:${server.address().port}`, registrations, tokenCalls }))
  })
}

function decodeBody (r) {
  return Buffer.from(r.bodyBase64, 'base64').toString('utf8')
}


describe('bridge + reference worker over a loopback testnet', { timeout: 150_000 }, () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ht-e2e-'))
  const socketPath = path.join(dir, 'bridge.sock')
  const swarmFile = path.join(dir, 'swarm.json')
  const driveDir = path.join(dir, 'drive-src')
  const fileBytes = Buffer.alloc(200_000)
  for (let i = 0; i < fileBytes.length; i++) fileBytes[i] = (i * 7) % 251
  const fileHash = createHash('sha256').update(fileBytes).digest('hex')
  let bridge, workerA, workerB, gateway, rpc, readyA, readyB, bridgeInfo
  const sk = randomSecretKeyHex()

  before(async () => {
    fs.mkdirSync(driveDir)
    fs.writeFileSync(path.join(driveDir, 'picture.png'), fileBytes)
    gateway = await startFakeGateway()
    bridge = spawnReady('src/main.mjs', [], {
      marker: 'HYPERTUNA_BRIDGE_READY',
      env: {
        HYPERTUNA_BRIDGE_SOCKET: socketPath,
        HYPERTUNA_SWARM_BOOTSTRAP: 'local',
        HYPERTUNA_SWARM_BOOTSTRAP_FILE: swarmFile,
        HYPERTUNA_BRIDGE_STORAGE: path.join(dir, 'bridge'),
        HYPERTUNA_BRIDGE_REGISTER_TIMEOUT_MS: '1500',
        HYPERTUNA_BRIDGE_HEALTH_INTERVAL_MS: '2000'
      }
    })
    bridgeInfo = await bridge.ready
    rpc = await TestRpcClient.connect(socketPath)
    await rpc.call('hello', { protocol: 1, client: 'e2e', subscribe: ['peer.*'] })
    // The gateway side (Python in production) accepts only the 'alpha' relay's swarm
    // registration and stays silent for 'beta', which must then get a 503 from the bridge.
    rpc.on('event', (f) => {
      if (f.event !== 'peer.register') return
      const name = f.data.body && f.data.body.relays && f.data.body.relays[0] && f.data.body.relays[0].name
      if (name === 'alpha') {
        rpc.call('register.reply', { registerId: f.data.registerId, statusCode: 200, body: { status: 'ok' } }).catch(() => {})
      }
    })
    workerA = spawnReady('src/worker/main.mjs', [
      '--bootstrap-file', swarmFile,
      '--storage', path.join(dir, 'worker-a'),
      '--name', 'alpha',
      '--gateway-url', gateway.url,
      '--secret', SECRET,
      '--drive-import', driveDir,
      '--issue-token'
    ], { marker: 'HYPERTUNA_WORKER_READY' })
    readyA = await workerA.ready
  })

  after(async () => {
    if (rpc) rpc.close()
    await stopProcess(workerA)
    await stopProcess(workerB)
    await stopProcess(bridge)
    if (gateway) await new Promise((resolve) => gateway.server.close(resolve))
    fs.rmSync(dir, { recursive: true, force: true })
  })

  it('publishes the loopback bootstrap list and the gateway key', async () => {
    const info = await rpc.call('swarm.info')
    assert.equal(info.mode, 'local')
    assert.ok(info.testnetNodes >= 4)
    assert.ok(info.bootstrap.length > 0)
    for (const node of info.bootstrap) assert.match(node, /^127\.0\.0\.1:\d+$/)
    assert.equal(info.gatewayPublicKey, bridgeInfo.gatewayPublicKey)
    const file = JSON.parse(fs.readFileSync(swarmFile, 'utf8'))
    assert.deepEqual(file.bootstrap, info.bootstrap)
    assert.equal(file.gatewayPublicKey, info.gatewayPublicKey)
  })

  it('the worker registers over HTTP with a valid HMAC and issues a client token', async () => {
    const reg = await waitFor(() => gateway.registrations.find((r) => r.registration.relayKey === readyA.relayKey), { what: 'registration' })
    assert.equal(reg.valid, true)
    assert.match(reg.registration.nonce, /^[0-9a-f]{24}$/)
    assert.deepEqual(reg.registration.peers, [readyA.swarmPublicKey])
    assert.equal(reg.registration.metadata.gatewayPath, readyA.gatewayPath)
    assert.match(reg.registration.metadata.gatewayPath, /^npub1[0-9a-z]+\/alpha$/)
    assert.equal(reg.registration.metadata.identifier, readyA.identifier)
    const tokenLine = await waitFor(() => workerA.lines.find((l) => l.startsWith('HYPERTUNA_WORKER_TOKEN ')), { what: 'token line' })
    const issued = JSON.parse(tokenLine.slice('HYPERTUNA_WORKER_TOKEN '.length))
    assert.ok(issued.token.startsWith('tok.'))
    const call = gateway.tokenCalls[0]
    assert.equal(call.valid, true)
    assert.equal(call.payload.relayKey, readyA.relayKey)
    assert.equal(call.payload.scope, 'relay-access')
  })

  it('reports the worker as connected and forwards its swarm registration to Python', async () => {
    const ev = await rpc.waitEvent((f) => f.event === 'peer.connected' && f.data.peerKey === readyA.swarmPublicKey)
    assert.equal(ev.data.protocol, 'hyperpipe-relay-v2')
    assert.equal(ev.data.handshake.role, 'relay-peer')
    assert.ok(ev.data.handshake.capabilities.includes('wsframe-push'))
    const reg = await rpc.waitEvent((f) => f.event === 'peer.register' && f.data.peerKey === readyA.swarmPublicKey)
    assert.equal(reg.data.body.publicKey, readyA.swarmPublicKey)
    assert.equal(reg.data.body.relays[0].relayKey, readyA.relayKey)
    const statusFile = path.join(dir, 'worker-a', 'status.json')
    const st = await waitFor(() => {
      const s = JSON.parse(fs.readFileSync(statusFile, 'utf8'))
      return s.swarmRegistration && s.swarmRegistration.statusCode ? s : null
    }, { what: 'swarm registration result' })
    assert.equal(st.swarmRegistration.statusCode, 200)
    assert.deepEqual(st.swarmRegistration.body, { status: 'ok' })
    // Python's 200 to the swarm registration is its approval: the peer may now use the blind peer.
    const bp = await rpc.call('blindPeer.status')
    assert.deepEqual(bp.trustedPeers.map((p) => p.key), [readyA.swarmPublicKey])
    const pool = await rpc.call('pool.status')
    const peer = pool.peers.find((p) => p.peerKey === readyA.swarmPublicKey)
    assert.equal(peer.state, 'ready')
    assert.equal(pool.publicKey, bridgeInfo.gatewayPublicKey)
  })

  it('EVENT through /post/relay is verified and acknowledged', async () => {
    const ev = signEvent({ kind: 1, content: 'first' }, sk)
    const r = await rpc.call('peer.request', {
      peerKey: readyA.swarmPublicKey,
      method: 'POST',
      path: `/post/relay/${readyA.relayKey}`,
      headers: { 'content-type': 'application/json' },
      body: { message: JSON.stringify(['EVENT', ev]), connectionKey: 'a1'.repeat(16) }
    })
    assert.equal(r.statusCode, 200)
    assert.deepEqual(ndjson(r), [['OK', ev.id, true, '']])
    const bad = { ...ev, content: 'forged' }
    const r2 = await rpc.call('peer.request', {
      peerKey: readyA.swarmPublicKey,
      method: 'POST',
      path: `/post/relay/${encodeURIComponent(readyA.identifier)}`,
      body: { message: JSON.stringify(['EVENT', bad]), connectionKey: 'a1'.repeat(16) }
    })
    const [ok] = ndjson(r2)
    assert.equal(ok[0], 'OK')
    assert.equal(ok[2], false)
    assert.match(ok[3], /^invalid:/)
  })

  it('REQ returns stored events newest first, then one EOSE; live events are pushed as ws frames', async () => {
    const older = signEvent({ kind: 1, content: 'older', created_at: Math.floor(Date.now() / 1000) - 100 }, sk)
    await rpc.call('peer.request', {
      peerKey: readyA.swarmPublicKey,
      method: 'POST',
      path: `/post/relay/${readyA.relayKey}`,
      body: { message: JSON.stringify(['EVENT', older]), connectionKey: 'a1'.repeat(16) }
    })
    const connKey = 'b2'.repeat(16)
    const r = await rpc.call('peer.request', {
      peerKey: readyA.swarmPublicKey,
      method: 'POST',
      path: `/post/relay/${readyA.relayKey}`,
      body: { message: JSON.stringify(['REQ', 'sub1', { kinds: [1], authors: [older.pubkey] }]), connectionKey: connKey }
    })
    const frames = ndjson(r)
    assert.deepEqual(frames.map((f) => f[0]), ['EVENT', 'EVENT', 'EOSE'])
    assert.deepEqual(frames.map((f) => f[2] && f[2].content), ['first', 'older', undefined])
    assert.deepEqual(frames[2], ['EOSE', 'sub1'])

    const live = signEvent({ kind: 1, content: 'live push' }, sk)
    await rpc.call('peer.request', {
      peerKey: readyA.swarmPublicKey,
      method: 'POST',
      path: `/post/relay/${readyA.relayKey}`,
      body: { message: JSON.stringify(['EVENT', live]), connectionKey: 'c3'.repeat(16) }
    })
    const pushed = await rpc.waitEvent((f) => f.event === 'peer.wsframe' && f.data.frame.connectionKey === connKey, 10_000)
    assert.equal(pushed.data.peerKey, readyA.swarmPublicKey)
    assert.equal(pushed.data.frame.relayKey, readyA.relayKey)
    assert.deepEqual(pushed.data.frame.frames, [['EVENT', 'sub1', live]])
    const poll = await rpc.call('peer.request', { peerKey: readyA.swarmPublicKey, method: 'GET', path: `/get/relay/${readyA.relayKey}/${connKey}` })
    assert.deepEqual(JSON.parse(decodeBody(poll)), [], 'a pushed frame is not delivered again by polling')

    const closed = await rpc.call('peer.request', {
      peerKey: readyA.swarmPublicKey,
      method: 'POST',
      path: `/post/relay/${readyA.relayKey}`,
      body: { message: JSON.stringify(['CLOSE', 'sub1']), connectionKey: connKey }
    })
    assert.equal(closed.statusCode, 200)
  })

  it('streams a drive file in chunks and answers 404 for unknown files', async () => {
    const r = await rpc.call('peer.request', {
      peerKey: readyA.swarmPublicKey,
      method: 'GET',
      path: `/drive/${encodeURIComponent(readyA.identifier)}/${fileHash}.png`,
      stream: true,
      chunkSize: 16 * 1024,
      window: 2
    })
    assert.equal(r.head.statusCode, 200)
    assert.equal(r.head.headers['content-type'], 'image/png')
    assert.equal(r.head.headers.etag, `"${fileHash}"`)
    assert.equal(r.head.bodyLength, fileBytes.length)
    assert.ok(r.result.chunks > 1)
    assert.ok(r.body.equals(fileBytes))
    const missing = await rpc.call('peer.request', {
      peerKey: readyA.swarmPublicKey,
      method: 'GET',
      path: `/drive/${readyA.relayKey}/${'0'.repeat(64)}`
    })
    assert.equal(missing.statusCode, 404)
  })

  it('health checks report latency, on demand and from the periodic sweep', async () => {
    const h = await rpc.call('peer.health', { peerKey: readyA.swarmPublicKey })
    assert.equal(h.ok, true)
    assert.ok(h.latencyMs >= 0 && h.latencyMs < 5000)
    const onDemand = await rpc.waitEvent((f) => f.event === 'peer.health' && f.data.peerKey === readyA.swarmPublicKey && f.data.latencyMs === h.latencyMs)
    // The sweep runs every 2 s in this test; a later health event can only come from it.
    const sweep = await rpc.waitEvent((f) => f.event === 'peer.health' && f.data.peerKey === readyA.swarmPublicKey && f.seq > onDemand.seq, 10_000)
    assert.equal(sweep.data.ok, true)
    const tele = await rpc.waitEvent((f) => f.event === 'peer.telemetry' && f.data.peerKey === readyA.swarmPublicKey, 10_000)
    assert.equal(tele.data.telemetry.relayKey, readyA.relayKey)
  })

  it('a legacy-protocol worker without push is reached, polled, and its unanswered registration gets 503', async () => {
    workerB = spawnReady('src/worker/main.mjs', [
      '--bootstrap-file', swarmFile,
      '--storage', path.join(dir, 'worker-b'),
      '--name', 'beta',
      '--protocol', 'hypertuna-relay-v2',
      '--no-ws-push',
      '--gateway-url', gateway.url,
      '--secret', SECRET
    ], { marker: 'HYPERTUNA_WORKER_READY' })
    readyB = await workerB.ready
    const c = await rpc.call('peer.connect', { peerKey: readyB.swarmPublicKey, timeoutMs: 30_000 })
    assert.equal(c.protocol, 'hypertuna-relay-v2')
    const connKey = 'd4'.repeat(16)
    const req = await rpc.call('peer.request', {
      peerKey: readyB.swarmPublicKey,
      method: 'POST',
      path: `/post/relay/${readyB.relayKey}`,
      body: { message: JSON.stringify(['REQ', 'live', { kinds: [1], since: Math.floor(Date.now() / 1000) - 5 }]), connectionKey: connKey }
    })
    // Poll-only, like real workers: nothing in the reply, the EOSE waits for the poll.
    assert.deepEqual(ndjson(req), [])
    assert.ok(!c.handshake.capabilities.includes('wsframe-push'))
    const eose = await rpc.call('peer.request', { peerKey: readyB.swarmPublicKey, method: 'GET', path: `/get/relay/${readyB.relayKey}/${connKey}` })
    assert.deepEqual(JSON.parse(decodeBody(eose)), [['EOSE', 'live']])
    const ev = signEvent({ kind: 1, content: 'polled' }, sk)
    await rpc.call('peer.request', {
      peerKey: readyB.swarmPublicKey,
      method: 'POST',
      path: `/post/relay/${readyB.relayKey}`,
      body: { message: JSON.stringify(['EVENT', ev]), connectionKey: 'e5'.repeat(16) }
    })
    const frames = await waitFor(async () => {
      const poll = await rpc.call('peer.request', { peerKey: readyB.swarmPublicKey, method: 'GET', path: `/get/relay/${readyB.relayKey}/${connKey}` })
      const arr = JSON.parse(decodeBody(poll))
      return arr.length ? arr : null
    }, { what: 'polled live event' })
    assert.deepEqual(frames, [['EVENT', 'live', ev]])

    const statusFile = path.join(dir, 'worker-b', 'status.json')
    const st = await waitFor(() => {
      const s = JSON.parse(fs.readFileSync(statusFile, 'utf8'))
      return s.swarmRegistration && s.swarmRegistration.statusCode ? s : null
    }, { what: 'beta swarm registration result' })
    assert.equal(st.swarmRegistration.statusCode, 503)
    assert.equal(st.swarmRegistration.body.error, 'registration-timeout')
    const bp = await rpc.call('blindPeer.status')
    assert.ok(!bp.trustedPeers.some((p) => p.key === readyB.swarmPublicKey), 'an unanswered registration grants nothing')

    // Failed HTTP registrations are retried after 1 s, then 2 s: the third attempt succeeds.
    const betaRegs = await waitFor(() => {
      const regs = gateway.registrations.filter((r) => r.registration.relayKey === readyB.relayKey)
      return regs.length >= 3 ? regs : null
    }, { timeoutMs: 15_000, what: 'registration retries' })
    assert.ok(betaRegs.every((r) => r.valid))
    assert.equal(new Set(betaRegs.map((r) => r.registration.nonce)).size, betaRegs.length, 'every attempt has a fresh nonce')
    const spacing = betaRegs[1].registration.issuedAt - betaRegs[0].registration.issuedAt
    assert.ok(spacing >= 900 && spacing < 5000, `first retry after ${spacing} ms`)
  })

  it('rejects bad parameters and unreachable peers with typed errors', async () => {
    await assert.rejects(rpc.call('peer.request', { peerKey: 'xyz', path: '/health' }), (e) => e.code === 'invalid-params')
    await assert.rejects(rpc.call('peer.request', { peerKey: readyA.swarmPublicKey, path: 'health' }), (e) => e.code === 'invalid-params')
    await assert.rejects(rpc.call('register.reply', { registerId: 'nope', statusCode: 200 }), (e) => e.code === 'not-found')
    await assert.rejects(
      rpc.call('peer.request', { peerKey: 'ab'.repeat(32), path: '/health', connectTimeoutMs: 1500 }),
      (e) => e.code === 'peer-unavailable'
    )
  })

  it('reports disconnects: worker stop and explicit peer.disconnect', async () => {
    await rpc.call('peer.disconnect', { peerKey: readyB.swarmPublicKey })
    const dB = await rpc.waitEvent((f) => f.event === 'peer.disconnected' && f.data.peerKey === readyB.swarmPublicKey, 10_000)
    assert.equal(dB.data.reason, 'manual-destroy')

    await rpc.call('peer.connect', { peerKey: readyA.swarmPublicKey })
    workerA.child.kill('SIGTERM')
    const dA = await rpc.waitEvent((f) => f.event === 'peer.disconnected' && f.data.peerKey === readyA.swarmPublicKey, 20_000)
    assert.ok(['stream-close', 'stream-error', 'protocol-close'].includes(dA.data.reason), dA.data.reason)
    await workerA.exited
    const pool = await rpc.call('pool.status')
    const a = pool.peers.find((p) => p.peerKey === readyA.swarmPublicKey)
    assert.ok(a, 'a wanted peer stays in the pool for reconnection')
    assert.notEqual(a.state, 'ready')
    assert.equal(a.wanted, true)
  })
})
