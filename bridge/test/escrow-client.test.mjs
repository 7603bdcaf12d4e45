import test from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import https from 'node:https'
import { execFileSync } from 'node:child_process'
import sodium from 'sodium-universal'
import {
  frame, canonicalJson, keyId, signingKeyPairFromSeed, writerPublicKeyOf, writerPackagePlaintext, sealWriterPackage,
  signDeposit, buildDeposit, buildStatement, depositMessage, statementMessage, sign, verify, verifyPolicy, loadSigningKey,
  b64decode, EscrowClient, MTLSTransport, EscrowHTTPError, EscrowUnavailable, PolicyError, MonotonicClock, DOMAIN
} from '../src/worker/escrow-client.mjs'
import { ReferenceWorker } from '../src/worker/worker.mjs'
import { startLocalTestnet } from '../src/swarm/bootstrap.mjs'

// A copy of tests/escrow/wire-vectors-v1.json (the Python escrow's golden vectors).
const V = JSON.parse(fs.readFileSync(new URL('./fixtures/escrow-wire-vectors-v1.json', import.meta.url), 'utf8'))
const hex = (b) => Buffer.from(b).toString('hex')
const worker = signingKeyPairFromSeed(Buffer.from(V.workerSeedHex, 'hex'))
const writer = signingKeyPairFromSeed(Buffer.from(V.writerSeedHex, 'hex'))

/** Python's nacl.public.PrivateKey(seed): the 32 bytes are the X25519 secret itself. */
function escrowBoxKeys (secret) {
  const publicKey = Buffer.alloc(32)
  sodium.crypto_scalarmult_base(publicKey, secret)
  return { publicKey, secretKey: Buffer.from(secret) }
}

function unseal (keys, sealed) {
  const plain = Buffer.alloc(sealed.length - sodium.crypto_box_SEALBYTES)
  assert.ok(sodium.crypto_box_seal_open(plain, sealed, keys.publicKey, keys.secretKey), 'sealed box opens')
  return plain
}

const escrow = escrowBoxKeys(Buffer.from(V.escrowBoxSeedHex, 'hex'))
const vectorPolicy = { version: V.deposit.policyVersion, escrowKeyId: V.escrowKeyId, escrowPublicKey: V.escrowPublicKeyHex }

test('the fixture is the escrow\'s golden vector file (when the Python tree is present)', (t) => {
  const source = new URL('../../tests/escrow/wire-vectors-v1.json', import.meta.url)
  if (!fs.existsSync(source)) return t.skip('tests/escrow is not next to this package')
  assert.deepEqual(JSON.parse(fs.readFileSync(source, 'utf8')), V)
})

test('vector keys: worker, writer and escrow public keys and the escrow key id', () => {
  assert.equal(hex(worker.publicKey), V.workerPublicKeyHex)
  assert.equal(hex(writer.publicKey), V.writerPublicKeyHex)
  assert.equal(hex(writer.secretKey), V.writerSeedHex + V.writerPublicKeyHex)
  assert.equal(hex(escrow.publicKey), V.escrowPublicKeyHex)
  assert.equal(keyId(escrow.publicKey), V.escrowKeyId)
  assert.equal(hex(writerPublicKeyOf(writer.secretKey)), V.writerPublicKeyHex)
})

test('vector: the writer package plaintext, and the vector sealed box opens to it', () => {
  const plaintext = writerPackagePlaintext(V.relayKey, writer.publicKey, writer.secretKey)
  assert.equal(hex(plaintext), V.writerPackagePlaintextHex)
  const opened = unseal(escrow, b64decode(V.deposit.sealedSecret, 'sealedSecret'))
  assert.equal(hex(opened), V.writerPackagePlaintextHex)
})

test('vector: deposit signing string, signature and body reproduce byte for byte', () => {
  const d = V.deposit
  const sealed = b64decode(d.sealedSecret, 'sealedSecret')
  const signed = depositMessage({
    relayKey: d.relayKey,
    workerKey: worker.publicKey,
    ownerIdentity: d.ownerIdentity,
    writerPublicKey: writer.publicKey,
    sealedSecret: sealed,
    escrowKeyId: d.escrowKeyId,
    policyVersion: d.policyVersion,
    allowGatewayWrites: d.allowGatewayWrites,
    expiresAt: d.expiresAt,
    issuedAt: d.issuedAt,
    idempotencyKey: d.idempotencyKey
  })
  assert.equal(hex(signed), V.depositSignedHex)
  assert.equal(sign(worker.secretKey, signed).toString('base64'), d.signature)
  assert.ok(verify(worker.publicKey, signed, Buffer.from(d.signature, 'base64')))

  const body = signDeposit({
    signing: worker,
    policy: vectorPolicy,
    relayKey: d.relayKey,
    writerPublicKey: writer.publicKey,
    sealed,
    ownerIdentity: d.ownerIdentity,
    expiresAt: d.expiresAt,
    issuedAt: d.issuedAt,
    idempotencyKey: d.idempotencyKey,
    allowGatewayWrites: d.allowGatewayWrites
  })
  // Same keys, same order, same values: JSON.stringify compares all three.
  assert.equal(JSON.stringify(body), JSON.stringify(d))
})

test('vector: heartbeat and revoke signing strings, signatures and bodies', () => {
  const hb = buildStatement('heartbeat', { signing: worker, relayKey: V.relayKey, issuedAt: V.heartbeat.issuedAt })
  assert.equal(hex(statementMessage('heartbeat', V.relayKey, worker.publicKey, V.heartbeat.issuedAt)), V.heartbeatSignedHex)
  assert.deepEqual({ ...hb }, { version: 1, ...V.heartbeat })
  assert.ok(verify(worker.publicKey, Buffer.from(V.heartbeatSignedHex, 'hex'), Buffer.from(V.heartbeat.signature, 'base64')))

  const rv = buildStatement('revoke', { signing: worker, relayKey: V.relayKey, issuedAt: V.revoke.issuedAt, reason: V.revoke.reason })
  assert.equal(hex(statementMessage('revoke', V.relayKey, worker.publicKey, V.revoke.issuedAt, V.revoke.reason)), V.revokeSignedHex)
  assert.deepEqual({ ...rv }, { version: 1, ...V.revoke })
  assert.ok(verify(worker.publicKey, Buffer.from(V.revokeSignedHex, 'hex'), Buffer.from(V.revoke.signature, 'base64')))
  // Domain separation: a heartbeat signature is no revoke signature.
  assert.equal(verify(worker.publicKey, Buffer.from(V.revokeSignedHex, 'hex'), Buffer.from(V.heartbeat.signature, 'base64')), false)
})

test('a fresh deposit seals to the escrow key and signs what it carries', () => {
  const body = buildDeposit({
    signing: worker, policy: vectorPolicy, relayKey: V.relayKey, writerSecret: writer.secretKey, ownerIdentity: 'me', expiresAt: 1767312000, issuedAt: 1767225600999
  })
  assert.match(body.idempotencyKey, /^[A-Za-z0-9_-]{16,64}$/)
  const sealed = b64decode(body.sealedSecret, 'sealedSecret')
  assert.notEqual(body.sealedSecret, V.deposit.sealedSecret) // sealed boxes are randomised
  assert.equal(hex(unseal(escrow, sealed)), V.writerPackagePlaintextHex)
  const signed = depositMessage({ ...body, workerKey: worker.publicKey, writerPublicKey: writer.publicKey, sealedSecret: sealed })
  assert.ok(verify(worker.publicKey, signed, b64decode(body.signature, 'signature', 64)))
  assert.equal(body.writerPublicKey, V.writerPublicKeyHex)
  assert.ok(!JSON.stringify(body).includes(V.writerSeedHex))
  // A secret whose halves do not match is refused before anything is sealed.
  const bad = Buffer.from(writer.secretKey)
  bad[40] ^= 1
  assert.throws(() => buildDeposit({ signing: worker, policy: vectorPolicy, relayKey: V.relayKey, writerSecret: bad, expiresAt: 1, issuedAt: 1 }), /halves/)
})

test('framing is length-prefixed (as escrow/crypto.py message())', () => {
  assert.deepEqual(frame('d', ['ab', Buffer.from([0])]), Buffer.from('d\x00\x00\x00\x00\x02ab\x00\x00\x00\x01\x00', 'latin1'))
  assert.notDeepEqual(frame('d', ['a', 'bc']), frame('d', ['ab', 'c']))
  assert.throws(() => statementMessage('heartbeat', V.relayKey, worker.publicKey, -1), /issuedAt/)
  assert.throws(() => statementMessage('heartbeat', V.relayKey, worker.publicKey, 1.5), /issuedAt/)
})

test('canonical JSON matches Python json.dumps(sort_keys, compact, ensure_ascii)', () => {
  // python3 -c 'import json;print(json.dumps({"b":1,"a":"é☃\n","c":[True,None]},sort_keys=True,separators=(",",":"),ensure_ascii=True))'
  assert.equal(canonicalJson({ b: 1, a: 'é☃\n', c: [true, null] }), '{"a":"\\u00e9\\u2603\\n","b":1,"c":[true,null]}')
  assert.throws(() => canonicalJson({ a: 1.5 }))
})

function signedPolicy (overrides = {}) {
  const signer = signingKeyPairFromSeed(Buffer.alloc(32, 9))
  const policy = {
    version: 3,
    heartbeatSilenceSeconds: 90,
    mirrorMaxAgeSeconds: 120,
    leaseTtlSeconds: 300,
    leaseMaxTtlSeconds: 3600,
    depositMaxTtlSeconds: 604800,
    escrowPublicKey: V.escrowPublicKeyHex,
    escrowKeyId: V.escrowKeyId,
    verifyKey: hex(signer.publicKey),
    ...overrides
  }
  const signature = sign(signer.secretKey, frame(DOMAIN.policy, [canonicalJson(policy)])).toString('base64')
  return { document: { policy, signature }, signer }
}

test('policy: signature verified, pinned key enforced, tampering refused', () => {
  const { document, signer } = signedPolicy()
  assert.equal(verifyPolicy(document).version, 3)
  assert.equal(verifyPolicy(document, signer.publicKey).escrowKeyId, V.escrowKeyId)
  assert.throws(() => verifyPolicy(document, Buffer.alloc(32, 1)), PolicyError)
  assert.throws(() => verifyPolicy({ ...document, policy: { ...document.policy, leaseTtlSeconds: 301 } }), /does not verify/)
  assert.throws(() => verifyPolicy({ ...document, signature: 'AAAA' }), PolicyError)
  assert.throws(() => verifyPolicy({ signature: document.signature }), /malformed/)
  // A correctly signed policy whose key id does not belong to its escrow key is refused too.
  assert.throws(() => verifyPolicy(signedPolicy({ escrowKeyId: '0000000000000000' }).document), /escrowKeyId/)
})

test('signing key file: created once with 0600, reloaded, hex seed or 64-byte secret', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ht-escrow-key-'))
  try {
    const file = path.join(dir, 'signing')
    assert.throws(() => loadSigningKey(file), /cannot read/)
    const created = loadSigningKey(file, { create: true })
    assert.equal(fs.statSync(file).mode & 0o777, 0o600)
    assert.deepEqual(loadSigningKey(file, { create: true }).publicKey, created.publicKey)
    fs.writeFileSync(file, V.workerSeedHex + V.workerPublicKeyHex + '\n')
    assert.equal(hex(loadSigningKey(file).publicKey), V.workerPublicKeyHex)
    fs.writeFileSync(file, V.workerSeedHex + V.writerPublicKeyHex + '\n')
    assert.throws(() => loadSigningKey(file), (err) => /does not match/.test(err.message) && !err.message.includes(V.workerSeedHex))
    fs.writeFileSync(file, 'zz\n')
    assert.throws(() => loadSigningKey(file), /expected a 32-byte seed/)
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
})

test('the issuedAt clock strictly increases even when the wall clock does not', () => {
  let now = 1000
  const clock = new MonotonicClock(() => now)
  assert.equal(clock.next(), 1000)
  assert.equal(clock.next(), 1001)
  now = 500
  assert.equal(clock.next(), 1002)
  now = 5000
  assert.equal(clock.next(), 5000)
})

// ---- mutual TLS against a local server -------------------------------------------------------------

function haveOpenssl () {
  try {
    execFileSync('openssl', ['version'], { stdio: 'ignore' })
    return true
  } catch {
    return false
  }
}

/** A throwaway CA with a server certificate for 127.0.0.1 and a worker client certificate. */
function makePki (dir) {
  const run = (...args) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' })
  run('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'ca-key.pem', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=test escrow CA')
  fs.writeFileSync(path.join(dir, 'server.ext'), 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n')
  fs.writeFileSync(path.join(dir, 'client.ext'), 'extendedKeyUsage=clientAuth\n')
  for (const [name, subj, ext] of [['server', '/CN=escrow', 'server.ext'], ['worker', '/OU=worker/CN=w1', 'client.ext']]) {
    run('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${name}-key.pem`, '-out', `${name}.csr`, '-subj', subj)
    run('x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca-key.pem', '-CAcreateserial', '-out', `${name}.pem`, '-days', '2', '-extfile', ext)
  }
  const p = (f) => path.join(dir, f)
  return { ca: p('ca.pem'), serverCert: p('server.pem'), serverKey: p('server-key.pem'), cert: p('worker.pem'), key: p('worker-key.pem') }
}

async function startServer (t, pki, handler, tlsOpts = {}) {
  const server = https.createServer({
    ca: fs.readFileSync(pki.ca),
    cert: fs.readFileSync(pki.serverCert),
    key: fs.readFileSync(pki.serverKey),
    requestCert: true,
    rejectUnauthorized: true,
    ...tlsOpts
  }, (req, res) => {
    const chunks = []
    req.on('data', (c) => chunks.push(c))
    req.on('end', () => handler(req, res, Buffer.concat(chunks).toString('utf8')))
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.after(() => new Promise((resolve) => { server.closeAllConnections(); server.close(resolve) }))
  return `https://127.0.0.1:${server.address().port}`
}

const json = (res, status, body) => {
  res.writeHead(status, { 'content-type': 'application/json' })
  res.end(JSON.stringify(body))
}

test('mTLS transport: client certificate, TLS 1.3, retries resend the identical deposit', { skip: !haveOpenssl() && 'openssl is not installed' }, async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ht-escrow-pki-'))
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }))
  const pki = makePki(dir)
  const { document } = signedPolicy()
  const deposits = []
  let failNext = 2
  const url = await startServer(t, pki, (req, res, body) => {
    const peer = req.socket.getPeerCertificate()
    assert.equal(peer.subject.OU, 'worker')
    assert.equal(req.socket.getProtocol(), 'TLSv1.3')
    if (req.method === 'GET' && req.url === '/prefix/policy') return json(res, 200, document)
    if (req.method === 'POST' && req.url === '/prefix/escrow') {
      deposits.push(body)
      // First a dropped connection, then a 503: both must be retried with the same bytes.
      if (failNext === 2) { failNext--; return req.socket.destroy() }
      if (failNext === 1) { failNext--; return json(res, 503, { error: 'unavailable' }) }
      return json(res, 201, { depositId: 'd1', writerPublicKey: JSON.parse(body).writerPublicKey, policyVersion: 3 })
    }
    if (req.url === '/prefix/escrow/heartbeat') return json(res, 401, { error: 'signature-replayed', message: 'no' })
    json(res, 404, { error: 'not-found' })
  })
  const transport = new MTLSTransport(url + '/prefix/', { ca: pki.ca, cert: pki.cert, key: pki.key, timeoutMs: 5000 })
  const client = new EscrowClient({ transport, signing: worker, sleep: async () => {} })
  const res = await client.deposit(V.relayKey, writer.secretKey, { ownerIdentity: 'peer' })
  assert.equal(res.depositId, 'd1')
  assert.equal(deposits.length, 3)
  assert.equal(deposits[0], deposits[1])
  assert.equal(deposits[1], deposits[2])
  const sent = JSON.parse(deposits[0])
  assert.equal(sent.policyVersion, 3)
  assert.equal(hex(unseal(escrow, b64decode(sent.sealedSecret, 's'))), V.writerPackagePlaintextHex)

  // A definite 4xx is not retried and surfaces its code, without the request body.
  await assert.rejects(client.heartbeat(V.relayKey), (err) => err instanceof EscrowHTTPError && err.status === 401 &&
    err.code === 'signature-replayed' && !err.message.includes(V.relayKey))

  // Without a client certificate the server refuses the handshake: a transport error.
  const anonymous = new MTLSTransport(url, { ca: pki.ca, cert: undefined, key: undefined, timeoutMs: 5000 })
  await assert.rejects(anonymous.request('GET', '/prefix/policy'), EscrowUnavailable)
  // A server from another CA is refused.
  const otherDir = fs.mkdtempSync(path.join(os.tmpdir(), 'ht-escrow-pki-'))
  t.after(() => fs.rmSync(otherDir, { recursive: true, force: true }))
  const other = makePki(otherDir)
  const wrongCa = new MTLSTransport(url, { ca: other.ca, cert: pki.cert, key: pki.key, timeoutMs: 5000 })
  await assert.rejects(wrongCa.request('GET', '/prefix/policy'), EscrowUnavailable)
})

test('mTLS transport: TLS 1.2 servers are refused and silent servers time out', { skip: !haveOpenssl() && 'openssl is not installed' }, async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ht-escrow-pki-'))
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }))
  const pki = makePki(dir)
  const old = await startServer(t, pki, (req, res) => json(res, 200, {}), { maxVersion: 'TLSv1.2' })
  const transport12 = new MTLSTransport(old, { ca: pki.ca, cert: pki.cert, key: pki.key, timeoutMs: 5000 })
  await assert.rejects(transport12.request('GET', '/policy'), EscrowUnavailable)

  const silent = await startServer(t, pki, () => {})
  const slow = new MTLSTransport(silent, { ca: pki.ca, cert: pki.cert, key: pki.key, timeoutMs: 300 })
  const started = Date.now()
  await assert.rejects(slow.request('GET', '/policy'), /timed out/)
  assert.ok(Date.now() - started < 3000)
  assert.throws(() => new MTLSTransport('http://127.0.0.1:1', pki), /https/)
})

// ---- the reference worker deposits, heartbeats and rotates -------------------------------------------

/**
 * An in-process escrow for the worker: checks every signature and opens every deposit with its box
 * key the way escrow/services.py does, refuses released writer keys, and asks for rotation once.
 */
function fakeEscrow () {
  const box = escrowBoxKeys(Buffer.alloc(32, 7))
  const { document } = signedPolicy({ escrowPublicKey: hex(box.publicKey), escrowKeyId: keyId(box.publicKey) })
  const state = { deposits: [], heartbeats: 0, released: new Set(), rotateOnHeartbeat: false, lastSigned: 0 }
  const transport = {
    async request (method, p, body) {
      if (method === 'GET' && p === '/policy') return document
      if (p === '/escrow') {
        const sealed = b64decode(body.sealedSecret, 'sealedSecret')
        const signed = depositMessage({ ...body, workerKey: Buffer.from(body.workerKey, 'hex'), writerPublicKey: Buffer.from(body.writerPublicKey, 'hex'), sealedSecret: sealed })
        assert.ok(verify(Buffer.from(body.workerKey, 'hex'), signed, b64decode(body.signature, 'signature', 64)))
        assert.ok(body.issuedAt > state.lastSigned)
        state.lastSigned = body.issuedAt
        const plain = unseal(box, sealed)
        const secret = plain.subarray(plain.length - 64)
        assert.equal(hex(writerPublicKeyOf(secret)), body.writerPublicKey)
        assert.deepEqual(plain, writerPackagePlaintext(body.relayKey, Buffer.from(body.writerPublicKey, 'hex'), secret))
        if (state.released.has(body.writerPublicKey)) throw new EscrowHTTPError(409, { error: 'writer-key-must-rotate' })
        state.deposits.push(body)
        return { depositId: `d${state.deposits.length}`, relayKey: body.relayKey, writerPublicKey: body.writerPublicKey, expiresAt: body.expiresAt, policyVersion: body.policyVersion, escrowKeyId: body.escrowKeyId, supersedes: null }
      }
      if (p === '/escrow/heartbeat') {
        const signed = statementMessage('heartbeat', body.relayKey, Buffer.from(body.workerKey, 'hex'), body.issuedAt)
        assert.ok(verify(Buffer.from(body.workerKey, 'hex'), signed, b64decode(body.signature, 'signature', 64)))
        assert.ok(body.issuedAt > state.lastSigned)
        state.lastSigned = body.issuedAt
        state.heartbeats++
        const rotationRequired = state.rotateOnHeartbeat
        state.rotateOnHeartbeat = false
        return { relayKey: body.relayKey, rotationRequired, leaseRevoked: rotationRequired ? 'lease-1' : null, serverTime: 0 }
      }
      throw new EscrowHTTPError(404, { error: 'not-found' })
    }
  }
  return { transport, state, box }
}

function quiet () {
  const noop = () => {}
  const l = { debug: noop, info: noop, warn: noop, error: noop }
  l.child = () => l
  return l
}

async function waitFor (fn, what, timeoutMs = 20_000) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const v = await fn()
    if (v) return v
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

test('the worker deposits its gateway writer, heartbeats, and rotates when the escrow asks', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ht-escrow-worker-'))
  const testnet = await startLocalTestnet(4)
  const writerFile = path.join(dir, 'gateway-writer.json')
  const fake = fakeEscrow()
  const events = []
  const make = () => new ReferenceWorker({
    bootstrap: testnet.bootstrap,
    storageDir: path.join(dir, 'storage'),
    logger: quiet(),
    telemetryIntervalMs: 0,
    registerIntervalMs: 0,
    wakeupIntervalMs: 0,
    gatewayWriterOut: writerFile,
    escrow: { transport: fake.transport, heartbeatMs: 100 }
  })
  let w = make()
  w.on('escrow', (e) => events.push(e))
  t.after(async () => {
    await w.stop()
    await testnet.destroy()
    fs.rmSync(dir, { recursive: true, force: true })
  })
  await w.start()
  await waitFor(() => events.length === 1, 'the first deposit')
  const first = JSON.parse(fs.readFileSync(writerFile, 'utf8'))
  assert.equal(events[0].writerPublicKey, first.publicKey)
  assert.equal(events[0].relayKey, w.relayKey)
  assert.equal(fake.state.deposits[0].ownerIdentity, w.swarmPublicKey)
  assert.equal(fs.statSync(path.join(dir, 'storage', 'escrow-signing-key')).mode & 0o777, 0o600)
  assert.equal(w.status().escrow.depositId, 'd1')
  assert.ok(!JSON.stringify(w.status()).includes(first.secretKey))
  await waitFor(() => fake.state.heartbeats >= 2, 'heartbeats')

  // The gateway used a lease meanwhile: the next heartbeat asks for a new writer key.
  fake.state.released.add(first.publicKey)
  fake.state.rotateOnHeartbeat = true
  await waitFor(() => events.length === 2, 'the rotated deposit')
  const second = JSON.parse(fs.readFileSync(writerFile, 'utf8'))
  assert.notEqual(second.publicKey, first.publicKey)
  assert.equal(events[1].writerPublicKey, second.publicKey)
  assert.ok(await w.relay.isWriter(second.writerKey))
  assert.ok(await w.relay.isWriter(first.writerKey))
  const beats = fake.state.heartbeats
  await waitFor(() => fake.state.heartbeats > beats, 'heartbeats after the rotation')

  // Restarted on the same storage with a released writer in the file: refused, rotated, deposited.
  await w.stop()
  fake.state.released.add(second.publicKey)
  w = make()
  w.on('escrow', (e) => events.push(e))
  await w.start()
  await waitFor(() => events.length === 3, 'the deposit after the restart')
  const third = JSON.parse(fs.readFileSync(writerFile, 'utf8'))
  assert.ok(![first.publicKey, second.publicKey].includes(third.publicKey))
  assert.equal(events[2].writerPublicKey, third.publicKey)
  assert.equal(events[2].workerKey, events[0].workerKey) // the same signing key from storage
  assert.equal(fake.state.deposits.length, 3)
})
