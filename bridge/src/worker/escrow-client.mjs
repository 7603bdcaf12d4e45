/**
 * Worker side of the escrow wire format (escrow/WIRE.md, version 1): policy fetch and verification,
 * deposit of the gateway writer's secret (sealed box to the escrow key), heartbeat and revoke, signed
 * with the worker's Ed25519 key over domain-separated, length-prefixed frames. A port of
 * escrow/worker_client.py; test/escrow-client.test.mjs checks it against the golden vectors.
 *
 * Transport is HTTPS with a client certificate (mutual TLS, TLS 1.3 minimum, the server verified
 * against the escrow's private CA only). Errors carry the escrow's error code and HTTP status, never
 * a request body or key material.
 */
import https from 'node:https'
import fs from 'node:fs'
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto'
import sodium from 'sodium-universal'

export const WIRE_VERSION = 1
export const DOMAIN = Object.freeze({
  deposit: 'hypertuna/escrow/deposit/v1',
  heartbeat: 'hypertuna/escrow/heartbeat/v1',
  revoke: 'hypertuna/escrow/revoke/v1',
  writerPackage: 'hypertuna/escrow/writer-package/v1',
  policy: 'hypertuna/escrow/policy/v1'
})
const MAX_RESPONSE_BYTES = 1024 * 1024
const HEX32 = /^[0-9a-f]{64}$/

/** The escrow could not be reached, or answered 5xx (safe to resend an identical deposit). */
export class EscrowUnavailable extends Error {
  constructor (message) {
    super(message)
    this.name = 'EscrowUnavailable'
  }
}

/** A definite 4xx answer, with the wire error code (`writer-key-must-rotate`, …). */
export class EscrowHTTPError extends Error {
  constructor (status, body) {
    const code = body && typeof body.error === 'string' ? body.error : 'error'
    super(`escrow answered ${status} ${code}`)
    this.name = 'EscrowHTTPError'
    this.status = status
    this.code = code
    this.body = body
  }
}

export class PolicyError extends Error {
  constructor (message) {
    super(message)
    this.name = 'PolicyError'
  }
}

// ---- encodings and framing -----------------------------------------------------------------------

/** `domain || 0x00 || for each field: uint32_be(len) || field` (strings as UTF-8). */
export function frame (domain, fields) {
  const parts = [Buffer.from(domain, 'ascii'), Buffer.alloc(1)]
  for (const value of fields) {
    const raw = typeof value === 'string' ? Buffer.from(value, 'utf8') : Buffer.from(value.buffer, value.byteOffset, value.byteLength)
    const len = Buffer.alloc(4)
    len.writeUInt32BE(raw.length)
    parts.push(len, raw)
  }
  return Buffer.concat(parts)
}

function decimal (n, name) {
  if (!Number.isSafeInteger(n) || n < 0) throw new TypeError(`${name} must be a non-negative integer`)
  return String(n)
}

export function sha256Hex (data) {
  return createHash('sha256').update(data).digest('hex')
}

/** First 16 hex characters of SHA-256 of a public key (the escrow's `escrowKeyId`). */
export function keyId (publicKey) {
  return sha256Hex(publicKey).slice(0, 16)
}

/** Strict standard base64 with padding (what the escrow accepts). */
export function b64decode (value, field, length = null) {
  if (typeof value !== 'string' || value.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(value)) {
    throw new TypeError(`${field} is not valid base64`)
  }
  const raw = Buffer.from(value, 'base64')
  if (raw.toString('base64') !== value) throw new TypeError(`${field} is not valid base64`)
  if (length !== null && raw.length !== length) throw new TypeError(`${field} must decode to ${length} bytes`)
  return raw
}

/**
 * Python's `json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)` for JSON
 * values made of objects, arrays, strings, integers, booleans and null.
 */
export function canonicalJson (value) {
  if (value === null || typeof value === 'boolean') return JSON.stringify(value)
  if (typeof value === 'number') {
    if (!Number.isSafeInteger(value)) throw new TypeError('canonical JSON here carries integers only')
    return String(value)
  }
  if (typeof value === 'string') {
    return JSON.stringify(value).replace(/[\u007f-\uffff]/g, (ch) => '\\u' + ch.charCodeAt(0).toString(16).padStart(4, '0'))
  }
  if (Array.isArray(value)) return '[' + value.map(canonicalJson).join(',') + ']'
  if (typeof value === 'object') {
    // Python sorts keys by code point; JS sort on strings compares UTF-16 units, equal for the BMP.
    return '{' + Object.keys(value).sort().map((k) => canonicalJson(k) + ':' + canonicalJson(value[k])).join(',') + '}'
  }
  throw new TypeError(`cannot encode ${typeof value}`)
}

// ---- keys --------------------------------------------------------------------------------------------

/** An Ed25519 key pair from a 32-byte seed; `secretKey` is the 64-byte libsodium form (seed || public). */
export function signingKeyPairFromSeed (seed) {
  if (!seed || seed.length !== 32) throw new TypeError('an Ed25519 seed is 32 bytes')
  const publicKey = Buffer.alloc(sodium.crypto_sign_PUBLICKEYBYTES)
  const secretKey = Buffer.alloc(sodium.crypto_sign_SECRETKEYBYTES)
  sodium.crypto_sign_seed_keypair(publicKey, secretKey, seed)
  return { publicKey, secretKey }
}

/** The public key a 64-byte writer secret signs as, checked against its embedded half. */
export function writerPublicKeyOf (secretKey) {
  if (!secretKey || secretKey.length !== 64) throw new TypeError('writer secret must be 64 bytes (seed || public key)')
  const derived = signingKeyPairFromSeed(secretKey.subarray(0, 32))
  wipe(derived.secretKey)
  if (!timingSafeEqual(derived.publicKey, Buffer.from(secretKey.subarray(32)))) {
    throw new TypeError('writer secret halves do not belong together')
  }
  return derived.publicKey
}

export function sign (secretKey, message) {
  const signature = Buffer.alloc(sodium.crypto_sign_BYTES)
  sodium.crypto_sign_detached(signature, message, secretKey)
  return signature
}

export function verify (publicKey, message, signature) {
  if (!publicKey || publicKey.length !== 32 || !signature || signature.length !== 64) return false
  return sodium.crypto_sign_verify_detached(signature, message, publicKey)
}

export function wipe (buf) {
  if (!buf) return
  if (sodium.sodium_memzero) sodium.sodium_memzero(buf)
  else buf.fill(0)
}

/**
 * Read a key file: a 32-byte seed or 64-byte secret as hex. With `create`, a missing file gets a
 * fresh seed (0600). Returns the key pair; the file contents never appear in an error.
 */
export function loadSigningKey (file, { create = false } = {}) {
  let text
  try {
    text = fs.readFileSync(file, 'utf8').trim()
  } catch (err) {
    if (err.code !== 'ENOENT' || !create) throw new Error(`cannot read escrow signing key ${file}: ${err.code || 'error'}`)
    const seed = randomBytes(32)
    try {
      fs.writeFileSync(file, seed.toString('hex') + '\n', { mode: 0o600, flag: 'wx' })
    } catch (writeErr) {
      wipe(seed)
      if (writeErr.code === 'EEXIST') return loadSigningKey(file)
      throw new Error(`cannot create escrow signing key ${file}: ${writeErr.code || 'error'}`)
    }
    const pair = signingKeyPairFromSeed(seed)
    wipe(seed)
    return pair
  }
  if (!/^(?:[0-9a-fA-F]{64}|[0-9a-fA-F]{128})$/.test(text)) {
    throw new Error(`${file}: expected a 32-byte seed or 64-byte secret as hex`)
  }
  const raw = Buffer.from(text, 'hex')
  const pair = signingKeyPairFromSeed(raw.subarray(0, 32))
  const matches = raw.length === 32 || timingSafeEqual(raw.subarray(32), pair.publicKey)
  wipe(raw)
  if (!matches) throw new Error(`${file}: the secret's public half does not match its seed`)
  return pair
}

// ---- policy ------------------------------------------------------------------------------------------

/** Check the policy signature (against a pinned verify key when given) and return the policy. */
export function verifyPolicy (document, pinnedVerifyKey = null) {
  const policy = document && document.policy
  if (!policy || typeof policy !== 'object' || Array.isArray(policy)) throw new PolicyError('policy document is malformed')
  if (typeof policy.verifyKey !== 'string' || !HEX32.test(policy.verifyKey)) throw new PolicyError('policy verify key is malformed')
  const verifyKey = Buffer.from(policy.verifyKey, 'hex')
  if (pinnedVerifyKey && !(pinnedVerifyKey.length === 32 && timingSafeEqual(verifyKey, Buffer.from(pinnedVerifyKey)))) {
    throw new PolicyError('policy is signed by an unexpected escrow key')
  }
  let signature
  try {
    signature = b64decode(document.signature, 'signature', 64)
  } catch {
    throw new PolicyError('policy signature is malformed')
  }
  let signed
  try {
    signed = frame(DOMAIN.policy, [canonicalJson(policy)])
  } catch {
    throw new PolicyError('policy document is malformed')
  }
  if (!verify(verifyKey, signed, signature)) throw new PolicyError('policy signature does not verify')
  if (!Number.isSafeInteger(policy.version) || policy.version < 1) throw new PolicyError('policy version is malformed')
  if (typeof policy.escrowPublicKey !== 'string' || !HEX32.test(policy.escrowPublicKey)) throw new PolicyError('escrow public key is malformed')
  if (policy.escrowKeyId !== keyId(Buffer.from(policy.escrowPublicKey, 'hex'))) throw new PolicyError('escrowKeyId does not match the escrow public key')
  return policy
}

// ---- messages ------------------------------------------------------------------------------------------

export function writerPackagePlaintext (relayKey, writerPublicKey, writerSecret) {
  return frame(DOMAIN.writerPackage, [relayKey, writerPublicKey, writerSecret])
}

/** crypto_box_seal(writer package, escrow X25519 key); the plaintext buffer is wiped. */
export function sealWriterPackage (escrowPublicKey, relayKey, writerPublicKey, writerSecret) {
  const plaintext = writerPackagePlaintext(relayKey, writerPublicKey, writerSecret)
  try {
    const sealed = Buffer.alloc(plaintext.length + sodium.crypto_box_SEALBYTES)
    sodium.crypto_box_seal(sealed, plaintext, escrowPublicKey)
    return sealed
  } finally {
    wipe(plaintext)
  }
}

export function depositMessage ({
  relayKey, workerKey, ownerIdentity, writerPublicKey, sealedSecret, escrowKeyId, policyVersion,
  allowGatewayWrites, expiresAt, issuedAt, idempotencyKey
}) {
  return frame(DOMAIN.deposit, [
    relayKey,
    Buffer.from(workerKey).toString('hex'),
    ownerIdentity,
    Buffer.from(writerPublicKey).toString('hex'),
    sha256Hex(sealedSecret),
    escrowKeyId,
    decimal(policyVersion, 'policyVersion'),
    allowGatewayWrites ? '1' : '0',
    decimal(expiresAt, 'expiresAt'),
    decimal(issuedAt, 'issuedAt'),
    idempotencyKey
  ])
}

export function statementMessage (kind, relayKey, workerKey, issuedAt, reason = '') {
  const worker = Buffer.from(workerKey).toString('hex')
  if (kind === 'heartbeat') return frame(DOMAIN.heartbeat, [relayKey, worker, decimal(issuedAt, 'issuedAt')])
  if (kind === 'revoke') return frame(DOMAIN.revoke, [relayKey, worker, decimal(issuedAt, 'issuedAt'), reason])
  throw new TypeError(`unknown statement kind ${kind}`)
}

export function newIdempotencyKey () {
  return randomBytes(24).toString('base64url') // 32 characters of [A-Za-z0-9_-]
}

/** The signed deposit body around an already sealed package (split out so vectors can pin `sealed`). */
export function signDeposit ({
  signing, policy, relayKey, writerPublicKey, sealed, ownerIdentity = '', expiresAt, issuedAt,
  idempotencyKey, allowGatewayWrites = true
}) {
  const fields = {
    relayKey,
    workerKey: signing.publicKey,
    ownerIdentity,
    writerPublicKey,
    sealedSecret: sealed,
    escrowKeyId: policy.escrowKeyId,
    policyVersion: Number(policy.version),
    allowGatewayWrites,
    expiresAt,
    issuedAt,
    idempotencyKey
  }
  return {
    version: WIRE_VERSION,
    relayKey,
    workerKey: b4hex(signing.publicKey),
    ownerIdentity,
    writerPublicKey: b4hex(writerPublicKey),
    sealedSecret: Buffer.from(sealed).toString('base64'),
    escrowKeyId: policy.escrowKeyId,
    policyVersion: Number(policy.version),
    allowGatewayWrites,
    expiresAt,
    issuedAt,
    idempotencyKey,
    signature: sign(signing.secretKey, depositMessage(fields)).toString('base64')
  }
}

/** The deposit body: the writer secret sealed to the escrow key, signed by the worker. */
export function buildDeposit ({ signing, policy, relayKey, writerSecret, ...rest }) {
  const writerPublicKey = writerPublicKeyOf(writerSecret)
  const sealed = sealWriterPackage(Buffer.from(policy.escrowPublicKey, 'hex'), relayKey, writerPublicKey, writerSecret)
  return signDeposit({ signing, policy, relayKey, writerPublicKey, sealed, idempotencyKey: rest.idempotencyKey || newIdempotencyKey(), ...withoutUndefined(rest) })
}

/** A signed heartbeat (`kind = 'heartbeat'`) or revoke (`kind = 'revoke'`) body. */
export function buildStatement (kind, { signing, relayKey, issuedAt, reason = '' }) {
  const body = {
    version: WIRE_VERSION,
    relayKey,
    workerKey: b4hex(signing.publicKey),
    issuedAt,
    signature: sign(signing.secretKey, statementMessage(kind, relayKey, signing.publicKey, issuedAt, reason)).toString('base64')
  }
  if (kind === 'revoke') body.reason = reason
  return body
}

function b4hex (buf) {
  return Buffer.from(buf).toString('hex')
}

function withoutUndefined (obj) {
  return Object.fromEntries(Object.entries(obj).filter(([, v]) => v !== undefined))
}

// ---- transport -----------------------------------------------------------------------------------------

/** JSON over HTTPS with a client certificate, TLS 1.3 minimum, verified against the escrow CA only. */
export class MTLSTransport {
  constructor (baseUrl, { ca, cert, key, timeoutMs = 10_000 }) {
    let url
    try {
      url = new URL(baseUrl)
    } catch {
      throw new TypeError('the escrow URL must be https://host[:port][/prefix]')
    }
    if (url.protocol !== 'https:' || !url.hostname) throw new TypeError('the escrow URL must be https://host[:port][/prefix]')
    this.hostname = url.hostname.replace(/^\[|\]$/g, '')
    this.port = Number(url.port || 443)
    this.prefix = url.pathname.replace(/\/+$/, '')
    this.timeoutMs = timeoutMs
    this.tls = {
      ca: typeof ca === 'string' ? fs.readFileSync(ca) : ca,
      cert: typeof cert === 'string' ? fs.readFileSync(cert) : cert,
      key: typeof key === 'string' ? fs.readFileSync(key) : key,
      minVersion: 'TLSv1.3',
      rejectUnauthorized: true
    }
  }

  request (method, path, body = null) {
    const payload = body === null ? null : Buffer.from(JSON.stringify(body), 'utf8')
    const headers = { accept: 'application/json' }
    if (payload) {
      headers['content-type'] = 'application/json'
      headers['content-length'] = String(payload.length)
    }
    return new Promise((resolve, reject) => {
      let settled = false
      const done = (fn, value) => {
        if (settled) return
        settled = true
        clearTimeout(deadline)
        fn(value)
      }
      const req = https.request({
        hostname: this.hostname,
        port: this.port,
        path: this.prefix + path,
        method,
        headers,
        agent: false,
        timeout: this.timeoutMs,
        ...this.tls
      }, (res) => {
        const chunks = []
        let size = 0
        res.on('data', (chunk) => {
          size += chunk.length
          if (size > MAX_RESPONSE_BYTES) {
            req.destroy()
            done(reject, new EscrowUnavailable('escrow response too large'))
            return
          }
          chunks.push(chunk)
        })
        res.on('error', (err) => done(reject, new EscrowUnavailable(`escrow request failed: ${err.code || err.name}`)))
        res.on('end', () => {
          let data
          try {
            const raw = Buffer.concat(chunks).toString('utf8')
            data = raw ? JSON.parse(raw) : {}
          } catch {
            data = { error: 'invalid-response' }
          }
          if (!data || typeof data !== 'object' || Array.isArray(data)) data = { error: 'invalid-response' }
          if (res.statusCode >= 500) done(reject, new EscrowUnavailable(`escrow answered ${res.statusCode}`))
          else if (res.statusCode >= 400) done(reject, new EscrowHTTPError(res.statusCode, data))
          else done(resolve, data)
        })
      })
      // The socket timeout covers idle periods; this one bounds the whole exchange.
      const deadline = setTimeout(() => {
        req.destroy()
        done(reject, new EscrowUnavailable('escrow request timed out'))
      }, this.timeoutMs)
      req.on('timeout', () => {
        req.destroy()
        done(reject, new EscrowUnavailable('escrow request timed out'))
      })
      req.on('error', (err) => done(reject, new EscrowUnavailable(`escrow request failed: ${err.code || err.name}`)))
      req.end(payload || undefined)
    })
  }
}

// ---- client -------------------------------------------------------------------------------------------

/** Millisecond timestamps that strictly increase (the escrow rejects a non-increasing issuedAt). */
export class MonotonicClock {
  constructor (now = Date.now) {
    this.now = now
    this.last = 0
  }

  next () {
    this.last = Math.max(Math.floor(this.now()), this.last + 1)
    return this.last
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

export class EscrowClient {
  /**
   * @param {object} opts
   * @param {{request: Function}} opts.transport  an MTLSTransport (or anything with its request())
   * @param {{publicKey: Buffer, secretKey: Buffer}} opts.signing  the worker's Ed25519 key pair
   * @param {Buffer|null} [opts.pinnedVerifyKey]  expected escrow verify key
   */
  constructor ({ transport, signing, pinnedVerifyKey = null, sleep: sleepFn = sleep, now = Date.now }) {
    this.transport = transport
    this.signing = signing
    this.pinnedVerifyKey = pinnedVerifyKey
    this.clock = new MonotonicClock(now)
    this.now = now
    this.sleep = sleepFn
    this._policy = null
  }

  get workerKey () {
    return b4hex(this.signing.publicKey)
  }

  async policy ({ refresh = false } = {}) {
    if (!this._policy || refresh) this._policy = verifyPolicy(await this.transport.request('GET', '/policy'), this.pinnedVerifyKey)
    return this._policy
  }

  /**
   * Deposit (or re-deposit) a 64-byte writer secret. On transport errors, 5xx and `deposit-conflict`
   * the identical body (same issuedAt, idempotency key, signature) is resent until answered.
   */
  async deposit (relayKey, writerSecret, {
    ownerIdentity = '', ttlSeconds = 86400, allowGatewayWrites = true, attempts = 8, deadlineMs = 60_000, idempotencyKey
  } = {}) {
    const policy = await this.policy()
    const body = buildDeposit({
      signing: this.signing,
      policy,
      relayKey,
      writerSecret,
      ownerIdentity,
      expiresAt: Math.floor(this.now() / 1000) + ttlSeconds,
      issuedAt: this.clock.next(),
      idempotencyKey,
      allowGatewayWrites
    })
    return this._sendWithRetries('/escrow', body, { attempts, deadlineMs })
  }

  heartbeat (relayKey) {
    const body = buildStatement('heartbeat', { signing: this.signing, relayKey, issuedAt: this.clock.next() })
    return this.transport.request('POST', '/escrow/heartbeat', body)
  }

  revoke (relayKey, reason = 'worker-revoke') {
    const body = buildStatement('revoke', { signing: this.signing, relayKey, issuedAt: this.clock.next(), reason })
    return this.transport.request('POST', '/escrow/revoke', body)
  }

  async _sendWithRetries (path, body, { attempts, deadlineMs }) {
    const started = Date.now()
    let delay = 200
    for (let attempt = 1; attempt <= attempts; attempt++) {
      try {
        return await this.transport.request('POST', path, body)
      } catch (err) {
        if (err instanceof EscrowUnavailable) {
          // The first attempt may have committed; the same idempotency key makes the escrow answer
          // the retry from its record instead of depositing twice.
          if (attempt === attempts || Date.now() - started + delay > deadlineMs) throw err
        } else if (!(err instanceof EscrowHTTPError && err.code === 'deposit-conflict') || attempt === attempts) {
          throw err
        }
      }
      await this.sleep(delay)
      delay = Math.min(delay * 2, 5000)
    }
    throw new EscrowUnavailable('escrow did not answer')
  }
}
