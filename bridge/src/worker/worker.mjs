import { EventEmitter } from 'node:events'
import fs from 'node:fs'
import path from 'node:path'
import os from 'node:os'
import { randomBytes } from 'node:crypto'
import Corestore from 'corestore'
import Autobase from 'autobase'
import crypto from 'hypercore-crypto'
import HyperDHT from 'hyperdht'
import b4a from 'b4a'
import { RelayChannel, Router, RELAY_PROTOCOL, LEGACY_RELAY_PROTOCOL, baseHandshake } from '../protocol/relay-protocol.mjs'
import { createSwarm } from '../swarm/bootstrap.mjs'
import { writeFileAtomic, readJsonIfExists } from '../lib/files.mjs'
import { createLogger, errorMessage } from '../lib/log.mjs'
import { RelayStore } from './relay-store.mjs'
import { RelayDrive } from './drive.mjs'
import { Registrar } from './registrar.mjs'
import { RelayMirror } from './mirror.mjs'
import { EscrowClient, EscrowHTTPError, MTLSTransport, loadSigningKey, wipe } from './escrow-client.mjs'
import { verifyEvent, filterProblem, matchFilters, npubFromHex, randomSecretKeyHex, getPublicKeyHex } from './nostr.mjs'

/** An escrow error as text without bodies or key material (the wire code, or the transport reason). */
function escrowErrorText (err) {
  if (err instanceof EscrowHTTPError) return `${err.status} ${err.code}`
  return err && err.message ? err.message : String(err)
}

export const WORKER_CAPABILITIES = ['http', 'websocket', 'health', 'telemetry', 'wsframe-push']
const NDJSON = { 'content-type': 'application/x-ndjson' }
const JSONH = { 'content-type': 'application/json' }
const TOPIC_NAMES = {
  [RELAY_PROTOCOL]: 'hyperpipe-relay-network',
  [LEGACY_RELAY_PROTOCOL]: 'hypertuna-relay-network'
}

export function camelCase (name) {
  const words = String(name).trim().split(/[^a-zA-Z0-9]+/).filter(Boolean)
  if (words.length === 0) return 'relay'
  return words.map((w, i) => (i === 0 ? w.toLowerCase() : w[0].toUpperCase() + w.slice(1).toLowerCase())).join('')
}

function ndjson (frames) {
  return Buffer.from(frames.map((f) => JSON.stringify(f)).join('\n'), 'utf8')
}

function persistSecretHex (file) {
  try {
    const hex = fs.readFileSync(file, 'utf8').trim()
    if (/^[0-9a-f]{64}$/.test(hex)) return hex
  } catch (err) {
    if (err.code !== 'ENOENT') throw err
  }
  const hex = randomBytes(32).toString('hex')
  fs.writeFileSync(file, hex + '\n', { mode: 0o600 })
  return hex
}

/**
 * Reference worker: hosts one Nostr relay (Autobase 6.5.13 + Hyperbee view in the worker
 * layout), serves the worker protocol to gateways, registers over HTTP and Hyperswarm.
 * It stands in for real workers in demos and end-to-end tests, on a loopback testnet.
 */
export class ReferenceWorker extends EventEmitter {
  constructor (opts) {
    super()
    this.opts = {
      name: 'demo',
      protocol: RELAY_PROTOCOL,
      registerIntervalMs: 60_000,
      telemetryIntervalMs: 15_000,
      connectionIdleMs: 10 * 60_000,
      maxQueuedFrames: 1000,
      requiresAuth: false,
      wsPush: true,
      blindPeer: null,
      allowJoin: false,
      join: null,
      joinPeer: null,
      gatewayWriterOut: null,
      gatewayWriter: false,
      escrow: null,
      wakeupIntervalMs: 5000,
      ...opts
    }
    if (!Array.isArray(this.opts.bootstrap) || this.opts.bootstrap.length === 0) {
      throw new Error('worker needs an explicit bootstrap list')
    }
    if (![RELAY_PROTOCOL, LEGACY_RELAY_PROTOCOL].includes(this.opts.protocol)) {
      throw new Error(`unknown protocol ${this.opts.protocol}`)
    }
    this.log = this.opts.logger || createLogger('worker')
    this.storageDir = path.resolve(this.opts.storageDir)
    this.connections = new Map()
    this.gateways = new Map()
    this.channels = new Set()
    this.authTokens = new Map()
    this.metrics = { totalRequests: 0, successfulRequests: 0, failedRequests: 0, lastMetricsReset: Date.now() }
    this.lastSwarmRegistration = null
    this.imported = []
    this.startedAt = null
    this.timers = []
    this.closing = false
    this.mirror = null
    this.joinState = null
    this.gatewayWriter = null
    this.escrowClient = null
    this.escrowState = null
    this._escrowQueue = Promise.resolve()
    this._escrowTimer = null
    this.router = this._buildRouter()
    if (this.opts.escrow) {
      const e = this.opts.escrow
      if (!e.transport && !(e.url && e.ca && e.cert && e.key)) throw new Error('the escrow needs url, ca, cert and key')
      if (!(this.opts.gatewayWriterOut || this.opts.gatewayWriter)) throw new Error('the escrow needs a gateway writer (gatewayWriterOut or gatewayWriter)')
    }
  }

  /** Relay replication runs on swarm connections only for hosts that share a relay. */
  get replicates () {
    return !!(this.opts.allowJoin || this.opts.join)
  }

  async start () {
    fs.mkdirSync(this.storageDir, { recursive: true, mode: 0o700 })
    const relayMeta = readJsonIfExists(path.join(this.storageDir, 'relay.json'))

    this.ownerSecretKey = null
    if (this.opts.ownerHex) {
      this.ownerHex = this.opts.ownerHex
    } else {
      this.ownerSecretKey = persistSecretHex(path.join(this.storageDir, 'owner-secret-key'))
      this.ownerHex = getPublicKeyHex(this.ownerSecretKey)
    }
    this.npub = npubFromHex(this.ownerHex)
    this.slug = camelCase(this.opts.name)
    this.identifier = `${this.npub}:${this.slug}`
    this.gatewayPath = `${this.npub}/${this.slug}`

    if (this.opts.join && relayMeta && relayMeta.relayKey !== this.opts.join) {
      throw new Error(`storage ${this.storageDir} already hosts relay ${relayMeta.relayKey}`)
    }
    const bootstrapKey = relayMeta?.relayKey || this.opts.join || null
    this.store = new Corestore(path.join(this.storageDir, 'corestore'))
    await this.store.ready()
    this.relay = new RelayStore(this.store.namespace('relay'), {
      bootstrap: bootstrapKey ? b4a.from(bootstrapKey, 'hex') : null
    })
    await this.relay.ready()
    this.relayKey = this.relay.key
    if (!relayMeta) {
      const meta = { relayKey: this.relayKey, createdAt: Date.now() }
      if (this.opts.join) meta.joinedFrom = this.opts.joinPeer
      writeFileAtomic(path.join(this.storageDir, 'relay.json'), JSON.stringify(meta) + '\n')
    }
    this.relay.on('event', (ev) => {
      this._onLiveEvent(ev)
      if (this.mirror) this.mirror.onRelayChanged()
    })
    // A restarted host first looks for what other writers (a leased gateway writer, a failover
    // host) appended while it was away; see RelayStore.hintWakeupAll.
    await this.relay.hintWakeupAll()
    if (this.opts.gatewayWriterOut) this.gatewayWriter = await this._ensureGatewayWriter(this.opts.gatewayWriterOut)
    else if (this.opts.gatewayWriter) this.gatewayWriter = await this._createGatewayWriter()
    if (this.opts.escrow) this._openEscrowClient()

    this.drive = new RelayDrive(this.store)
    await this.drive.ready()
    if (this.opts.driveImport) {
      this.imported = await this.drive.importDirectory(this.identifier, this.opts.driveImport)
    }

    this._loadAuthTokens()

    const seed = b4a.from(persistSecretHex(path.join(this.storageDir, 'swarm-seed')), 'hex')
    const keyPair = HyperDHT.keyPair(seed)
    this.swarm = createSwarm({ bootstrap: this.opts.bootstrap, host: this.opts.swarmHost || '127.0.0.1', keyPair })
    this.swarmPublicKey = b4a.toString(keyPair.publicKey, 'hex')
    this.swarm.on('connection', (stream) => this._onConnection(stream))
    await this.swarm.dht.ready()
    await this.swarm.listen()
    const topic = HyperDHT.hash(Buffer.from(TOPIC_NAMES[this.opts.protocol], 'utf8'))
    await this.swarm.join(topic, { server: true, client: false }).flushed()
    if (this.opts.gatewayPeerKey) this.swarm.joinPeer(b4a.from(this.opts.gatewayPeerKey, 'hex'))
    if (this.opts.join && this.opts.joinPeer) this.swarm.joinPeer(b4a.from(this.opts.joinPeer, 'hex'))

    this.registrar = this.opts.gatewayUrl && this.opts.secret
      ? new Registrar({ gatewayUrl: this.opts.gatewayUrl, secret: this.opts.secret })
      : null

    this.startedAt = Date.now()
    if (this.opts.blindPeer && this.opts.blindPeer !== 'gateway') this._startMirror(this.opts.blindPeer)
    this._every(this.opts.telemetryIntervalMs, () => this._sendTelemetryAll())
    this._every(this.opts.registerIntervalMs, () => this._registerSwarmAll())
    this._every(this.opts.registerIntervalMs, () => this.mirror && this.mirror.sync().then(() => this.mirror && this.mirror.postMetadata()))
    this._every(this.opts.wakeupIntervalMs, () => this._wakeupOthers())
    this._every(60_000, () => this._gcConnections())
    if (this.registrar) this._scheduleRegistration((await this.registerHttp()).ok)
    if (this.escrowClient) this._escrowEnqueue(() => this._escrowDepositUntilAccepted())
    this.writeStatus()
    return this.status()
  }

  _every (ms, fn) {
    if (!ms || ms <= 0) return
    const t = setInterval(() => {
      Promise.resolve().then(fn).catch((err) => this.log.warn('periodic task failed', { error: errorMessage(err) }))
    }, ms)
    t.unref()
    this.timers.push(t)
  }

  async stop () {
    this.closing = true
    clearTimeout(this._regTimer)
    clearTimeout(this._escrowTimer)
    if (this._escrowWake) this._escrowWake()
    for (const t of this.timers) clearInterval(t)
    for (const ch of this.channels) ch.close()
    if (this.mirror) await this.mirror.close().catch(() => {})
    if (this.swarm) await this.swarm.destroy().catch(() => {})
    if (this.drive) await this.drive.close().catch(() => {})
    if (this.relay) await this.relay.close().catch(() => {})
    if (this.store) await this.store.close().catch(() => {})
    if (this.gatewayWriter && this.gatewayWriter.secretKey) wipe(this.gatewayWriter.secretKey)
    if (this.escrowClient) wipe(this.escrowClient.signing.secretKey)
  }

  status () {
    return {
      relayKey: this.relayKey,
      swarmPublicKey: this.swarmPublicKey,
      identifier: this.identifier,
      gatewayPath: this.gatewayPath,
      ownerPubkey: this.ownerHex,
      npub: this.npub,
      protocol: this.opts.protocol,
      driveKey: this.drive ? this.drive.key : null,
      files: this.imported,
      requiresAuth: this.opts.requiresAuth,
      relay: this.relay ? this.relay.info() : null,
      registration: this.registrar ? this.registrar.last : null,
      swarmRegistration: this.lastSwarmRegistration,
      gateways: [...this.gateways.keys()],
      mirror: this.mirror ? this.mirror.status() : null,
      join: this.joinState,
      gatewayWriterKey: this.gatewayWriter ? this.gatewayWriter.writerKey : null,
      escrow: this.escrowState,
      pid: process.pid
    }
  }

  // ---- blind-peer mirroring ----

  _startMirror (blindPeerKey) {
    if (this.closing || !/^[0-9a-f]{64}$/.test(blindPeerKey)) return
    if (this.mirror && this.mirror.blindPeerKey === blindPeerKey) return
    if (this.mirror) this.mirror.close().catch(() => {})
    this.mirror = new RelayMirror({
      swarm: this.swarm,
      store: this.store,
      relay: this.relay,
      drive: this.drive,
      blindPeerKey,
      registrar: this.registrar,
      identifier: this.identifier,
      ownerPeerKey: this.swarmPublicKey,
      logger: this.log.child('mirror')
    })
    this.mirror.start()
    this.emit('mirror', { blindPeerKey })
    this.writeStatus()
  }

  /** Periodic wakeup hint while other writers exist (their appends may arrive via the mirror). */
  async _wakeupOthers () {
    if (this.closing) return
    const keys = await this.relay.writerKeys()
    if (keys.length > 1) await this.relay.hintWakeupAll()
    if (this.mirror && keys.some((k) => !this.mirror.cores.has(k))) this.mirror.onRelayChanged()
  }

  /**
   * A dedicated gateway writer: a fresh Ed25519 key pair whose Autobase writer core is added as a
   * non-indexer, written to `file` (0600) as {relayKey, writerKey, publicKey, secretKey} (base64
   * secret). An existing file for this relay is reused. With the escrow on, the secret is kept in
   * memory for the deposit; otherwise it is wiped once written out.
   */
  async _ensureGatewayWriter (file) {
    const existing = readJsonIfExists(file)
    if (existing && existing.relayKey === this.relayKey && /^[0-9a-f]{64}$/.test(existing.writerKey || '')) {
      if (!(await this.relay.isWriter(existing.writerKey))) await this.relay.addWriter(existing.writerKey, { indexer: false })
      const writer = { writerKey: existing.writerKey, publicKey: existing.publicKey || null, secretKey: null }
      if (this.opts.escrow && typeof existing.secretKey === 'string') {
        const secretKey = Buffer.from(existing.secretKey, 'base64')
        if (secretKey.length === 64 && secretKey.subarray(32).toString('hex') === existing.publicKey) writer.secretKey = secretKey
        else wipe(secretKey)
      }
      if (!this.opts.escrow || writer.secretKey) return writer
      this.log.warn('gateway writer file has no usable secret; creating a new gateway writer')
    }
    return this._createGatewayWriter(file)
  }

  /**
   * Create and add a gateway writer. The writer core key is computed in a throwaway store from the
   * public key alone, so the secret key never enters this worker's own storage. Written to `file`
   * when given; the secret stays in memory only when the escrow needs it.
   */
  async _createGatewayWriter (file = null) {
    const keyPair = crypto.keyPair()
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ht-writer-key-'))
    let writerKey
    try {
      const tmpStore = new Corestore(tmp)
      const core = Autobase.getLocalCore(tmpStore, { keyPair: { publicKey: keyPair.publicKey, secretKey: null } })
      await core.ready()
      writerKey = b4a.toString(core.key, 'hex')
      await core.close()
      await tmpStore.close()
    } finally {
      fs.rmSync(tmp, { recursive: true, force: true })
    }
    await this.relay.addWriter(writerKey, { indexer: false })
    const publicKey = b4a.toString(keyPair.publicKey, 'hex')
    if (file) {
      const out = { relayKey: this.relayKey, writerKey, publicKey, secretKey: b4a.toString(keyPair.secretKey, 'base64'), createdAt: Date.now() }
      writeFileAtomic(file, JSON.stringify(out) + '\n', 0o600)
    }
    if (this.opts.escrow) return { writerKey, publicKey, secretKey: keyPair.secretKey }
    keyPair.secretKey.fill(0)
    return { writerKey, publicKey, secretKey: null }
  }

  // ---- escrow: deposit the gateway writer, heartbeat, rotate ----

  _openEscrowClient () {
    const e = this.opts.escrow
    const signingFile = e.signingKeyFile || path.join(this.storageDir, 'escrow-signing-key')
    this.escrowClient = new EscrowClient({
      transport: e.transport || new MTLSTransport(e.url, { ca: e.ca, cert: e.cert, key: e.key, timeoutMs: e.timeoutMs || 10_000 }),
      signing: loadSigningKey(signingFile, { create: true }),
      pinnedVerifyKey: e.verifyKey ? b4a.from(e.verifyKey, 'hex') : null
    })
    this.escrowState = { state: 'pending', workerKey: this.escrowClient.workerKey }
  }

  /** Escrow calls run one at a time, so issuedAt values reach the escrow in the order they were made. */
  _escrowEnqueue (task) {
    const run = this._escrowQueue.then(() => (this.closing ? null : task()))
    this._escrowQueue = run.catch((err) => this.log.warn('escrow task failed', { error: escrowErrorText(err) }))
    return run
  }

  _escrowSleep (ms) {
    return new Promise((resolve) => {
      this._escrowWake = resolve
      this._escrowTimer = setTimeout(resolve, ms)
      this._escrowTimer.unref()
    })
  }

  /**
   * Deposit the current gateway writer, retrying until the escrow accepts it. A writer key that
   * was released under a lease must rotate: a fresh gateway writer is added and deposited instead.
   */
  async _escrowDepositUntilAccepted () {
    let delay = 1000
    for (;;) {
      if (this.closing) return null
      try {
        const writer = this.gatewayWriter
        const res = await this.escrowClient.deposit(this.relayKey, writer.secretKey, {
          ownerIdentity: this.swarmPublicKey,
          ttlSeconds: this.opts.escrow.depositTtlSeconds || 86400
        })
        if (this.closing) return null
        this.escrowState = {
          state: 'deposited',
          workerKey: this.escrowClient.workerKey,
          depositId: res.depositId,
          writerPublicKey: res.writerPublicKey,
          writerKey: writer.writerKey,
          policyVersion: res.policyVersion,
          escrowKeyId: res.escrowKeyId,
          expiresAt: res.expiresAt,
          depositedAt: Date.now()
        }
        this.log.info('escrow deposit accepted', { depositId: res.depositId, writerPublicKey: res.writerPublicKey, replayed: !!res.replayed })
        this.emit('escrow', { ...this.escrowState, relayKey: this.relayKey })
        this.writeStatus()
        this._scheduleHeartbeat()
        return res
      } catch (err) {
        if (this.closing) return null
        if (err instanceof EscrowHTTPError && err.code === 'writer-key-must-rotate') {
          await this._rotateGatewayWriter()
          continue
        }
        if (err instanceof EscrowHTTPError && (err.code === 'escrow-key-changed' || err.code === 'policy-version-mismatch')) {
          await this.escrowClient.policy({ refresh: true }).catch(() => {})
        }
        this.escrowState = { ...this.escrowState, state: 'deposit-failed', error: escrowErrorText(err), at: Date.now() }
        this.log.warn('escrow deposit failed; retrying', { error: escrowErrorText(err), retryInMs: delay })
        await this._escrowSleep(delay)
        delay = Math.min(delay * 2, 60_000)
      }
    }
  }

  /** Replace the gateway writer with a fresh one (added to the Autobase); the old secret is wiped. */
  async _rotateGatewayWriter () {
    const old = this.gatewayWriter
    this.gatewayWriter = await this._createGatewayWriter(this.opts.gatewayWriterOut || null)
    if (old && old.secretKey) wipe(old.secretKey)
    this.log.info('gateway writer rotated', { writerKey: this.gatewayWriter.writerKey })
    this.writeStatus()
  }

  _scheduleHeartbeat () {
    clearTimeout(this._escrowTimer)
    const ms = this.opts.escrow.heartbeatMs || 30_000
    if (this.closing) return
    this._escrowTimer = setTimeout(() => {
      this._escrowEnqueue(() => this._escrowHeartbeat()).finally(() => {
        if (this.escrowState && this.escrowState.state === 'deposited') this._scheduleHeartbeat()
      })
    }, ms)
    this._escrowTimer.unref()
  }

  /**
   * One heartbeat. If the gateway held a lease meanwhile, the escrow asks for rotation: a new
   * gateway writer is deposited. A deposit past half its lifetime is renewed, and one the escrow no
   * longer knows (`unknown-relay`) is made again.
   */
  async _escrowHeartbeat () {
    try {
      const res = await this.escrowClient.heartbeat(this.relayKey)
      if (this.closing) return
      this.escrowState = { ...this.escrowState, lastHeartbeatAt: Date.now(), error: undefined }
      if (res.rotationRequired) {
        this.log.info('escrow asks for a new gateway writer', { leaseRevoked: res.leaseRevoked || null })
        await this._rotateGatewayWriter()
        await this._escrowDepositUntilAccepted()
        return
      }
      const s = this.escrowState
      if (s.expiresAt && s.depositedAt && Date.now() / 1000 > (s.depositedAt / 1000 + s.expiresAt) / 2) {
        await this._escrowDepositUntilAccepted()
      }
    } catch (err) {
      if (this.closing) return
      this.escrowState = { ...this.escrowState, error: escrowErrorText(err), errorAt: Date.now() }
      this.log.warn('escrow heartbeat failed', { error: escrowErrorText(err) })
      if (err instanceof EscrowHTTPError && err.code === 'unknown-relay') await this._escrowDepositUntilAccepted()
    }
  }

  // ---- failover hosting ----

  /**
   * Joining host: once the channel to the hosting worker is open, ask it to add our writer core,
   * then wait until the replicated system view lists us and the Autobase is writable.
   */
  async _requestJoin (ch) {
    if (this.joinState && (this.joinState.state === 'writable' || this.joinState.state === 'requesting')) return
    const writerKey = this.relay.info().localKey
    this.joinState = { state: 'requesting', writerKey, peer: this.opts.joinPeer, at: Date.now() }
    try {
      if (!this.relay.base.writable) {
        const res = await ch.request({ method: 'POST', path: '/relay/join', headers: JSONH, body: { relayKey: this.relayKey, writerKey } })
        if (res.statusCode !== 200) throw new Error(`join refused with ${res.statusCode}: ${res.body.toString('utf8').slice(0, 200)}`)
      }
      const deadline = Date.now() + 60_000
      while (!this.relay.base.writable) {
        if (this.closing) return
        if (Date.now() > deadline) throw new Error('not writable 60 s after the join was accepted')
        await this.relay.base.update()
        await new Promise((resolve) => setTimeout(resolve, 200))
      }
      this.joinState = { state: 'writable', writerKey, peer: this.opts.joinPeer, at: Date.now() }
      this.emit('joined', this.joinState)
      if (!this.closing) this.writeStatus()
    } catch (err) {
      this.joinState = { state: 'failed', writerKey, peer: this.opts.joinPeer, error: errorMessage(err), at: Date.now() }
      this.log.warn('join failed', { error: errorMessage(err) })
    }
  }

  async _relayJoin (req) {
    if (!this.opts.allowJoin) return { statusCode: 403, headers: JSONH, body: { error: 'join-not-allowed' } }
    let body
    try {
      body = JSON.parse(req.body.toString('utf8'))
    } catch {
      return { statusCode: 400, headers: JSONH, body: { error: 'invalid-json' } }
    }
    if (!body || body.relayKey !== this.relayKey) return { statusCode: 404, headers: JSONH, body: { error: 'relay-not-found' } }
    if (typeof body.writerKey !== 'string' || !/^[0-9a-f]{64}$/.test(body.writerKey)) {
      return { statusCode: 400, headers: JSONH, body: { error: 'writerKey must be 64 hex' } }
    }
    if (!this.relay.base.writable) return { statusCode: 503, headers: JSONH, body: { error: 'not-writable' } }
    if (!(await this.relay.isWriter(body.writerKey))) await this.relay.addWriter(body.writerKey, { indexer: false })
    this.log.info('writer added on join request', { peerKey: req.peerKey })
    if (this.mirror) this.mirror.onRelayChanged()
    return { statusCode: 200, headers: JSONH, body: { status: 'added', relayKey: this.relayKey, writerKey: body.writerKey } }
  }

  writeStatus () {
    const file = this.opts.statusFile || path.join(this.storageDir, 'status.json')
    writeFileAtomic(file, JSON.stringify(this.status(), null, 2) + '\n')
  }

  // ---- auth tokens (per-user relay auth tokens the gateway forwards as x-auth-token) ----

  _authFile () {
    return path.join(this.storageDir, 'auth-tokens.json')
  }

  _loadAuthTokens () {
    const data = readJsonIfExists(this._authFile())
    if (data && Array.isArray(data.tokens)) {
      for (const t of data.tokens) this.authTokens.set(t.token, { pubkey: t.pubkey ?? null })
    }
  }

  addAuthToken (pubkey) {
    const token = randomBytes(32).toString('hex')
    this.authTokens.set(token, { pubkey: pubkey ?? null })
    const tokens = [...this.authTokens.entries()].map(([t, v]) => ({ token: t, pubkey: v.pubkey }))
    writeFileAtomic(this._authFile(), JSON.stringify({ tokens }) + '\n', 0o600)
    return token
  }

  /** Issue a gateway client token for `pubkey` (default: the relay owner). */
  async issueClientToken ({ pubkey, ttlSeconds } = {}) {
    if (!this.registrar) throw new Error('gateway URL and secret are required to issue tokens')
    const who = pubkey ?? this.ownerHex
    const relayAuthToken = this.addAuthToken(who)
    const issued = await this.registrar.issueToken({ relayKey: this.relayKey, relayAuthToken, pubkey: who, ttlSeconds })
    return { ...issued, relayKey: this.relayKey, gatewayPath: this.gatewayPath, pubkey: who }
  }

  _auth (headers) {
    const token = headers['x-auth-token']
    if (typeof token !== 'string' || token === '') return { present: false, valid: false, pubkey: null }
    const entry = this.authTokens.get(token)
    return { present: true, valid: !!entry, pubkey: entry ? entry.pubkey : null }
  }

  // ---- registration ----

  registrationMetadata () {
    return {
      identifier: this.identifier,
      publicIdentifier: this.identifier,
      name: this.opts.name,
      description: this.opts.description ?? `Reference relay ${this.opts.name}`,
      gatewayPath: this.gatewayPath,
      pathAliases: [this.identifier],
      requiresAuth: !!this.opts.requiresAuth,
      isPublic: true,
      ownerPeerKey: this.swarmPublicKey,
      ownerPubkey: this.ownerHex,
      driveKey: this.drive.key
    }
  }

  async registerHttp () {
    if (!this.registrar) return null
    const res = await this.registrar.register({
      relayKey: this.relayKey,
      peers: [this.swarmPublicKey],
      metadata: this.registrationMetadata()
    })
    if (!res.ok) this.log.warn('gateway registration failed', { status: res.status, error: res.error })
    this.emit('registered', res)
    if (!this.closing) this.writeStatus()
    return res
  }

  /**
   * Re-register every registerIntervalMs; after a failure retry sooner (1 s doubling up to the
   * interval), so a worker started before the gateway is registered soon after it comes up.
   */
  _scheduleRegistration (ok) {
    if (this.closing || !this.registrar) return
    this._regFailures = ok ? 0 : (this._regFailures || 0) + 1
    const interval = this.opts.registerIntervalMs
    const delay = ok ? interval : Math.min(interval || 60_000, 1000 * 2 ** Math.min(this._regFailures - 1, 6))
    if (!delay) return
    clearTimeout(this._regTimer)
    this._regTimer = setTimeout(async () => {
      const res = await this.registerHttp()
      this._scheduleRegistration(res.ok)
    }, delay)
    this._regTimer.unref()
  }

  /** Resolves once an HTTP registration has succeeded (at once if one already has). */
  waitRegistered () {
    if (this.registrar && this.registrar.last && this.registrar.last.ok) return Promise.resolve(this.registrar.last)
    return new Promise((resolve) => {
      const on = (res) => {
        if (!res.ok) return
        this.removeListener('registered', on)
        resolve(res)
      }
      this.on('registered', on)
    })
  }

  async _registerSwarmAll () {
    for (const gw of this.gateways.values()) await this._registerOverSwarm(gw).catch(() => {})
  }

  async _registerOverSwarm (gw) {
    const body = {
      publicKey: this.swarmPublicKey,
      relays: [{
        identifier: this.identifier,
        relayKey: this.relayKey,
        name: this.opts.name,
        description: this.opts.description ?? `Reference relay ${this.opts.name}`,
        isPublic: true,
        gatewayPath: this.gatewayPath,
        metadataUpdatedAt: this.startedAt
      }],
      address: null,
      mode: 'hyperswarm',
      timestamp: new Date().toISOString(),
      nostrPubkeyHex: this.ownerHex,
      pfpDriveKey: null,
      driveKey: this.drive.key
    }
    try {
      const res = await gw.channel.request({ method: 'POST', path: '/gateway/register', headers: JSONH, body })
      let json = null
      try { json = JSON.parse(res.body.toString('utf8')) } catch {}
      this.lastSwarmRegistration = { at: Date.now(), gateway: gw.peerKey, statusCode: res.statusCode, body: json }
    } catch (err) {
      this.lastSwarmRegistration = { at: Date.now(), gateway: gw.peerKey, statusCode: null, error: err.message }
    }
    this.emit('swarm-registered', this.lastSwarmRegistration)
    if (!this.closing) this.writeStatus()
    return this.lastSwarmRegistration
  }

  // ---- worker protocol ----

  _handshake () {
    return {
      ...baseHandshake({ isServer: true }),
      capabilities: WORKER_CAPABILITIES,
      role: 'relay-peer',
      isGateway: false,
      gatewayReplica: false,
      relayPublicKey: this.swarmPublicKey,
      peerId: this.swarmPublicKey,
      relayCount: 1,
      delegateReqToPeers: false
    }
  }

  _onConnection (stream) {
    const peerKey = b4a.toString(stream.remotePublicKey, 'hex')
    stream.on('error', () => {})
    // Hosts of a shared relay replicate their whole store with each other, as real workers do
    // on their relay swarm; a plain host never does, so gateways see only the worker protocol.
    if (this.replicates) this.store.replicate(stream)
    const ch = RelayChannel.from(stream, {
      protocol: this.opts.protocol,
      handshake: this._handshake(),
      onrequest: (req) => this._handle(ch, peerKey, req)
    })
    if (ch.closed) return
    this.channels.add(ch)
    if (this.opts.join && peerKey === this.opts.joinPeer) {
      ch.once('open', () => this._requestJoin(ch))
    }
    ch.on('close', () => {
      this.channels.delete(ch)
      const gw = this.gateways.get(peerKey)
      if (gw && gw.channel === ch) this.gateways.delete(peerKey)
    })
    stream.on('close', () => ch.close())
    ch.open()
  }

  async _handle (ch, peerKey, req) {
    this.metrics.totalRequests++
    try {
      const res = await this.router.handle({ ...req, channel: ch, peerKey })
      if (res && res.statusCode < 400) this.metrics.successfulRequests++
      else this.metrics.failedRequests++
      return res
    } catch (err) {
      this.metrics.failedRequests++
      throw err
    }
  }

  _buildRouter () {
    const r = new Router()
    r.add('POST', '/identify-gateway', (req) => this._identifyGateway(req))
    r.add('GET', '/health', () => ({ statusCode: 200, headers: JSONH, body: this._health() }))
    r.add('POST', '/relay/join', (req) => this._relayJoin(req))
    r.add('POST', '/register', () => ({ statusCode: 200, headers: JSONH, body: { status: 'acknowledged', timestamp: Date.now() } }))
    r.add('POST', '/post/relay/:identifier', (req) => this._postRelay(req))
    r.add('GET', '/get/relay/:identifier/:connectionKey', (req) => this._getRelay(req))
    for (const m of ['GET', 'HEAD', 'OPTIONS']) {
      r.add(m, '/drive/:identifier/:file', (req) => this._drive(req))
    }
    return r
  }

  _identifyGateway (req) {
    const expected = this.opts.gatewayPeerKey
    if (expected && expected !== req.peerKey) {
      return { statusCode: 409, headers: JSONH, body: { error: 'not-a-gateway-peer' } }
    }
    let payload = {}
    try {
      const body = JSON.parse(req.body.toString('utf8'))
      payload = body && typeof body.payload === 'object' && body.payload ? body.payload : {}
    } catch {}
    const remote = req.channel.remoteHandshake || {}
    const capabilities = new Set([
      ...(Array.isArray(remote.capabilities) ? remote.capabilities : []),
      ...(Array.isArray(payload.capabilities) ? payload.capabilities : [])
    ])
    const gw = { peerKey: req.peerKey, channel: req.channel, capabilities, identifiedAt: Date.now() }
    this.gateways.set(req.peerKey, gw)
    // `--blind-peer gateway`: mirror to the blind peer the gateway advertises in its handshake.
    const bpKey = payload.blindPeerPublicKey || remote.blindPeerPublicKey
    if (this.opts.blindPeer === 'gateway' && (payload.blindPeerEnabled || remote.blindPeerEnabled) && typeof bpKey === 'string') {
      this._startMirror(bpKey.toLowerCase())
    }
    // Telemetry and the swarm registration go out after the identify response: the gateway
    // only treats the connection as ready once that response arrives.
    setImmediate(() => {
      this._sendTelemetry(gw)
      this._registerOverSwarm(gw).catch(() => {})
    })
    this.emit('gateway', { peerKey: req.peerKey })
    return {
      statusCode: 200,
      headers: JSONH,
      body: { status: 'identified', relayPublicKey: this.swarmPublicKey, timestamp: Date.now() }
    }
  }

  _health () {
    const m = this.metrics
    return {
      status: 'healthy',
      uptime: Date.now() - this.startedAt,
      lastCheck: Date.now(),
      activeRelays: { count: 1, keys: [this.relayKey] },
      services: { hyperswarmStatus: 'connected', protocolStatus: 'connected', gatewayStatus: this.gateways.size > 0 ? 'connected' : 'disconnected' },
      metrics: { ...m, successRate: m.totalRequests ? m.successfulRequests / m.totalRequests : 1 },
      config: { gatewayUrl: this.opts.gatewayUrl ?? null, publicKey: this.swarmPublicKey },
      relay: this.relay.info(),
      timestamp: Date.now()
    }
  }

  _telemetry () {
    let queued = 0
    for (const c of this.connections.values()) queued += c.queue.length
    const info = this.relay.info()
    return {
      peerId: this.swarmPublicKey,
      latencyMs: 0,
      inFlightJobs: 0,
      failureRate: this.metrics.totalRequests ? this.metrics.failedRequests / this.metrics.totalRequests : 0,
      queueDepth: queued,
      reportedAt: Date.now(),
      relayKey: this.relayKey,
      viewLength: info.viewLength,
      viewIndexedLength: info.viewIndexedLength,
      eventsStored: this.relay.stats.stored,
      connections: this.connections.size
    }
  }

  _sendTelemetry (gw) {
    gw.channel.sendTelemetry(this._telemetry())
  }

  _sendTelemetryAll () {
    for (const gw of this.gateways.values()) this._sendTelemetry(gw)
  }

  _resolve (identifier) {
    let id = identifier
    if (!id.includes(':') && id.includes('/')) id = id.replace('/', ':')
    if (id.toLowerCase() === this.relayKey || id === this.identifier) return true
    return false
  }

  _connection (key, peerKey) {
    let conn = this.connections.get(key)
    if (!conn) {
      conn = { key, subs: new Map(), queue: [], peerKey, lastSeen: Date.now() }
      this.connections.set(key, conn)
    }
    conn.peerKey = peerKey
    conn.lastSeen = Date.now()
    return conn
  }

  _gcConnections () {
    const cutoff = Date.now() - this.opts.connectionIdleMs
    for (const [k, c] of this.connections) if (c.lastSeen < cutoff) this.connections.delete(k)
  }

  async _postRelay (req) {
    if (!this._resolve(req.params.identifier)) {
      return { statusCode: 404, headers: JSONH, body: { error: 'Relay not found' } }
    }
    let body
    try {
      body = JSON.parse(req.body.toString('utf8'))
    } catch {
      return { statusCode: 400, headers: NDJSON, body: ndjson([['NOTICE', 'invalid: request body is not JSON']]) }
    }
    const connectionKey = body && body.connectionKey
    if (typeof connectionKey !== 'string' || !/^([0-9a-f]{2}){1,64}$/.test(connectionKey)) {
      return { statusCode: 400, headers: NDJSON, body: ndjson([['NOTICE', 'invalid: connectionKey must be even-length lowercase hex']]) }
    }
    let frame = body.message
    if (typeof frame === 'string') {
      try {
        frame = JSON.parse(frame)
      } catch {
        return { statusCode: 200, headers: NDJSON, body: ndjson([['NOTICE', 'invalid: message is not JSON']]) }
      }
    }
    if (!Array.isArray(frame) || typeof frame[0] !== 'string') {
      return { statusCode: 200, headers: NDJSON, body: ndjson([['NOTICE', 'invalid: message must be a JSON array']]) }
    }
    const auth = this._auth(req.headers)
    const conn = this._connection(connectionKey, req.peerKey)
    switch (frame[0]) {
      case 'EVENT':
        return { statusCode: 200, headers: NDJSON, body: ndjson(await this._onEvent(frame[1], auth)) }
      case 'REQ': {
        if (this.opts.requiresAuth && !auth.valid) {
          const msg = auth.present ? 'Invalid authentication' : 'Authentication required for read access'
          return { statusCode: 403, headers: NDJSON, body: ndjson([['NOTICE', msg]]) }
        }
        return { statusCode: 200, headers: NDJSON, body: ndjson(await this._onReq(conn, frame)) }
      }
      case 'CLOSE': {
        if (typeof frame[1] === 'string') conn.subs.delete(frame[1])
        return { statusCode: 200, headers: NDJSON, body: Buffer.alloc(0) }
      }
      default:
        return { statusCode: 200, headers: NDJSON, body: ndjson([['NOTICE', `unsupported: ${frame[0]} is not supported`]]) }
    }
  }

  async _onEvent (ev, auth) {
    const id = ev && typeof ev.id === 'string' ? ev.id : ''
    const problem = verifyEvent(ev)
    if (problem) {
      this.relay.stats.rejected++
      return [['OK', id, false, problem]]
    }
    if (this.opts.requiresAuth) {
      if (!auth.present) return [['OK', id, false, 'auth-required: authentication required']]
      if (!auth.valid) return [['OK', id, false, 'restricted: invalid authentication']]
      if (auth.pubkey && auth.pubkey !== ev.pubkey) {
        return [['OK', id, false, 'restricted: pubkey mismatch - event must be signed by authenticated user']]
      }
    }
    try {
      const res = await this.relay.putEvent(ev)
      if (res.duplicate) return [['OK', id, true, 'duplicate: already have this event']]
      return [['OK', id, true, '']]
    } catch (err) {
      return [['OK', id, false, `error: ${err.message}`]]
    }
  }

  async _onReq (conn, frame) {
    const subId = frame[1]
    if (typeof subId !== 'string' || subId.length === 0 || subId.length > 64) {
      return [['NOTICE', 'invalid: subscription id must be a non-empty string of at most 64 characters']]
    }
    const filters = frame.slice(2)
    if (filters.length === 0) return [['CLOSED', subId, 'invalid: REQ needs at least one filter']]
    for (const f of filters) {
      const problem = filterProblem(f)
      if (problem) return [['CLOSED', subId, `invalid: ${problem}`]]
    }
    // Register before querying so events stored during the query are not lost; they are
    // held back until EOSE and deduplicated against the stored results.
    const sub = { filters, ready: false, held: [] }
    conn.subs.set(subId, sub)
    const events = await this.relay.queryFilters(filters)
    const frames = events.map((ev) => ['EVENT', subId, ev])
    frames.push(['EOSE', subId])
    const sent = new Set(events.map((e) => e.id))
    setImmediate(() => {
      if (conn.subs.get(subId) !== sub) return
      sub.ready = true
      const late = sub.held.filter((ev) => !sent.has(ev.id))
      sub.held = []
      if (late.length) this._deliver(conn, late.map((ev) => ['EVENT', subId, ev]))
    })
    return frames
  }

  _onLiveEvent (ev) {
    for (const conn of this.connections.values()) {
      const frames = []
      for (const [subId, sub] of conn.subs) {
        if (!matchFilters(sub.filters, ev)) continue
        if (!sub.ready) sub.held.push(ev)
        else frames.push(['EVENT', subId, ev])
      }
      if (frames.length) this._deliver(conn, frames)
    }
  }

  /**
   * Live frames go out as a ws-frame push when the gateway that last served this client
   * connection advertised 'wsframe-push'; otherwise they wait for the next poll. Each frame
   * takes exactly one of the two paths, so nothing is delivered twice.
   */
  _deliver (conn, frames) {
    const gw = conn.peerKey ? this.gateways.get(conn.peerKey) : null
    if (this.opts.wsPush && gw && gw.capabilities.has('wsframe-push') && !gw.channel.closed) {
      const ok = gw.channel.sendWsFrame({
        type: 'nostr-frames',
        relay: this.identifier,
        relayKey: this.relayKey,
        connectionKey: conn.key,
        frames
      })
      if (ok) return
    }
    conn.queue.push(...frames)
    if (conn.queue.length > this.opts.maxQueuedFrames) {
      const dropped = conn.queue.length - this.opts.maxQueuedFrames
      conn.queue.splice(0, dropped)
      conn.queue.unshift(['NOTICE', `warning: ${dropped} live events dropped while the connection was not polled`])
    }
  }

  async _getRelay (req) {
    if (!this._resolve(req.params.identifier)) {
      return { statusCode: 404, headers: JSONH, body: [['NOTICE', 'Relay not found']] }
    }
    const key = req.params.connectionKey
    if (!/^([0-9a-f]{2}){1,64}$/.test(key)) {
      return { statusCode: 400, headers: JSONH, body: [['NOTICE', 'invalid: connectionKey must be even-length lowercase hex']] }
    }
    if (this.opts.requiresAuth) {
      const auth = this._auth(req.headers)
      if (!auth.valid) {
        return { statusCode: 200, headers: JSONH, body: [['NOTICE', auth.present ? 'Invalid authentication' : 'Authentication required for read access']] }
      }
    }
    const conn = this.connections.get(key)
    if (!conn) return { statusCode: 200, headers: JSONH, body: [] }
    conn.lastSeen = Date.now()
    conn.peerKey = req.peerKey
    const frames = conn.queue.splice(0)
    return { statusCode: 200, headers: JSONH, body: frames }
  }

  async _drive (req) {
    let id = req.params.identifier
    if (!id.includes(':') && id.includes('/')) id = id.replace('/', ':')
    if (!this._resolve(id)) {
      return { statusCode: 404, headers: JSONH, body: { error: 'File not found' } }
    }
    return this.drive.serve(req, [this.identifier, this.relayKey])
  }

  /** Demo helper: sign an event with the owner key (only when the worker generated it). */
  ownerSecretKeyHex () {
    return this.ownerSecretKey
  }
}

export { randomSecretKeyHex }
