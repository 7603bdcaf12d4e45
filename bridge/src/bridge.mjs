import fs from 'node:fs'
import path from 'node:path'
import { randomBytes } from 'node:crypto'
import HyperDHT from 'hyperdht'
import b4a from 'b4a'
import { PeerPool, PoolError, normalizePeerKey } from './pool/peer-pool.mjs'
import { RpcServer, RpcError, RPC_PROTOCOL_VERSION } from './rpc/server.mjs'
import { baseHandshake, RELAY_PROTOCOLS } from './protocol/relay-protocol.mjs'
import { startLocalTestnet, createSwarm, bindHostFor, formatNodes } from './swarm/bootstrap.mjs'
import { writeFileAtomic } from './lib/files.mjs'
import { createLogger, errorMessage } from './lib/log.mjs'
import { BlindPeerService, BlindPeerError } from './blind/blind-peer.mjs'
import { LeaseManager, LeaseError } from './lease/lease-manager.mjs'
import { topicMatches } from './rpc/server.mjs'
import { GatewayDrives } from './drive/gateway-drives.mjs'
import { registerDriveMethods } from './drive/rpc.mjs'

export const BRIDGE_VERSION = '0.1.0'

/** Largest worker response returned inline by peer.request; larger ones need stream: true. */
export const MAX_INLINE_BODY = 8 * 1024 * 1024

/** Capabilities the bridge advertises to workers in its handshake. */
export const GATEWAY_CAPABILITIES = ['http', 'websocket', 'health', 'telemetry', 'wsframe-push']

function loadOrCreateSeed (storageDir) {
  const file = path.join(storageDir, 'swarm-seed')
  try {
    const hex = fs.readFileSync(file, 'utf8').trim()
    if (/^[0-9a-f]{64}$/.test(hex)) return b4a.from(hex, 'hex')
    throw new Error(`${file} is not 64 hex characters`)
  } catch (err) {
    if (err.code !== 'ENOENT') throw err
  }
  fs.mkdirSync(storageDir, { recursive: true, mode: 0o700 })
  const seed = randomBytes(32)
  // 'wx' fails if another process created it meanwhile; the seed is the gateway identity.
  fs.writeFileSync(file, seed.toString('hex') + '\n', { mode: 0o600, flag: 'wx' })
  return seed
}

function toBase64 (buf) {
  return Buffer.from(buf).toString('base64')
}

function requestBody (params) {
  if (params.bodyBase64 !== undefined && params.bodyBase64 !== null) {
    if (typeof params.bodyBase64 !== 'string') throw new RpcError('invalid-params', 'bodyBase64 must be a string')
    return Buffer.from(params.bodyBase64, 'base64')
  }
  if (params.body === undefined || params.body === null) return null
  if (typeof params.body === 'string') return Buffer.from(params.body, 'utf8')
  return Buffer.from(JSON.stringify(params.body), 'utf8')
}

function optionalMs (v, name) {
  if (v === undefined || v === null) return undefined
  const n = Number(v)
  if (!Number.isFinite(n) || n <= 0 || n > 600_000) throw new RpcError('invalid-params', `${name} must be 1..600000 ms`)
  return n
}

/**
 * The bridge process: owns the swarm (and, in local mode, the loopback testnet), the worker
 * connection pool and the RPC server. It reports facts and carries out requests; every
 * decision is taken by the Python side.
 */
export class Bridge {
  constructor (config, { logger } = {}) {
    this.config = config
    this.log = logger || createLogger('bridge')
    this.testnet = null
    this.swarm = null
    this.pool = null
    this.blind = null
    this.leases = null
    this.drives = null
    this.rpc = null
    this.bootstrapNodes = []
    this.pendingRegisters = new Map()
    this.startedAt = null
  }

  async start () {
    const cfg = this.config
    if (cfg.bootstrap.mode === 'local') {
      this.testnet = await startLocalTestnet(cfg.testnetNodes)
      this.bootstrapNodes = this.testnet.bootstrap.map((n) => ({ host: n.host, port: n.port }))
    } else {
      this.bootstrapNodes = cfg.bootstrap.nodes
    }
    const seed = cfg.seed ? b4a.from(cfg.seed, 'hex') : loadOrCreateSeed(cfg.storageDir)
    const keyPair = HyperDHT.keyPair(seed)
    this.swarm = createSwarm({
      bootstrap: this.bootstrapNodes,
      host: bindHostFor(cfg.bootstrap, cfg.swarmHost),
      keyPair
    })
    const publicKey = b4a.toString(keyPair.publicKey, 'hex')
    if (cfg.blindPeer && cfg.blindPeer.enabled) {
      // Started before the pool: its key goes into the handshake every worker receives.
      this.blind = new BlindPeerService({
        storageDir: cfg.storageDir,
        bootstrap: this.bootstrapNodes,
        host: bindHostFor(cfg.bootstrap, cfg.swarmHost),
        seed,
        maxBytes: cfg.blindPeer.maxBytes,
        cacheSize: cfg.blindPeer.cacheSize,
        staleMs: cfg.blindPeer.staleMs,
        progressIntervalMs: cfg.blindPeer.progressIntervalMs,
        announceIntervalMs: cfg.blindPeer.announceIntervalMs,
        trustWaitMs: cfg.blindPeer.trustWaitMs,
        logger: this.log.child('blind-peer')
      })
      for (const name of ['mirror.added', 'mirror.removed', 'mirror.progress']) {
        this.blind.on(name, (data) => this._event(name, data))
      }
      await this.blind.start()
      this.leases = new LeaseManager({
        bootstrap: this.bootstrapNodes,
        host: bindHostFor(cfg.bootstrap, cfg.swarmHost),
        seed,
        blind: this.blind,
        openTimeoutMs: cfg.leaseOpenTimeoutMs,
        logger: this.log.child('lease')
      })
      this.leases.on('lease.closed', (data) => this._event('lease.closed', data))
      await this.leases.start()
    }
    this.drives = new GatewayDrives({
      storageDir: cfg.storageDir,
      bootstrap: this.bootstrapNodes,
      host: bindHostFor(cfg.bootstrap, cfg.swarmHost),
      seed,
      blind: this.blind,
      logger: this.log.child('gateway-drives')
    })
    await this.drives.start()
    this.pool = new PeerPool({
      swarm: this.swarm,
      handshake: {
        ...baseHandshake({ isServer: false }),
        capabilities: GATEWAY_CAPABILITIES,
        role: 'gateway',
        isGateway: true,
        gatewayReplica: false,
        peerId: publicKey,
        // Workers file gateway connections under gatewayId / gatewayOrigin.
        gatewayId: cfg.gatewayId || publicKey,
        ...(cfg.publicUrl ? { publicUrl: cfg.publicUrl, gatewayOrigin: cfg.gatewayOrigin } : {}),
        dispatcherEnabled: false,
        hyperbeeRelayEnabled: false,
        ...(this.blind ? this.blind.handshakeFields() : { blindPeerEnabled: false })
      },
      onInboundRequest: (msg) => this._onInboundRequest(msg),
      logger: this.log.child('pool'),
      ...cfg.pool
    })
    this._wirePoolEvents()
    await this.pool.start()

    this.rpc = new RpcServer({
      secret: cfg.secret,
      logger: this.log.child('rpc'),
      info: { bridgeVersion: BRIDGE_VERSION, gatewayPublicKey: publicKey },
      onsubscribe: (conn, before) => this._replayProgress(conn, before)
    })
    this._registerMethods()
    const listening = {}
    if (cfg.socketPath) listening.socket = await this.rpc.listenUnix(cfg.socketPath)
    if (cfg.tcp) {
      const addr = await this.rpc.listenTcp(cfg.tcp.host, cfg.tcp.port)
      listening.tcp = `${addr.address}:${addr.port}`
    }
    this.listening = listening
    this.startedAt = Date.now()
    this.publishSwarmInfo()
    return this.swarmInfo()
  }

  swarmInfo () {
    return {
      mode: this.config.bootstrap.mode,
      bootstrap: formatNodes(this.bootstrapNodes),
      gatewayPublicKey: this.pool.publicKey,
      host: bindHostFor(this.config.bootstrap, this.config.swarmHost),
      testnetNodes: this.testnet ? this.testnet.nodes.length : 0,
      protocols: RELAY_PROTOCOLS,
      bootstrapFile: this.config.bootstrapFile
    }
  }

  /** Publish the bootstrap list and gateway key for workers started beside the bridge. */
  publishSwarmInfo () {
    const info = { ...this.swarmInfo(), rpc: this.listening, pid: process.pid, updatedAt: Date.now() }
    writeFileAtomic(this.config.bootstrapFile, JSON.stringify(info, null, 2) + '\n')
  }

  async stop () {
    for (const p of this.pendingRegisters.values()) {
      clearTimeout(p.timer)
      p.resolve({ statusCode: 503, body: { error: 'gateway-shutting-down' } })
    }
    this.pendingRegisters.clear()
    if (this.rpc) await this.rpc.close()
    if (this.pool) await this.pool.close()
    if (this.leases) await this.leases.stop()
    if (this.drives) await this.drives.stop()
    if (this.blind) await this.blind.stop()
    if (this.swarm) await this.swarm.destroy().catch(() => {})
    if (this.testnet) await this.testnet.destroy().catch(() => {})
    try {
      const cur = JSON.parse(fs.readFileSync(this.config.bootstrapFile, 'utf8'))
      if (cur.pid === process.pid) fs.unlinkSync(this.config.bootstrapFile)
    } catch {}
  }

  _wirePoolEvents () {
    this.pool.on('connected', (e) => this._event('peer.connected', e))
    this.pool.on('disconnected', (e) => this._event('peer.disconnected', e))
    this.pool.on('health', (e) => this._event('peer.health', e))
    this.pool.on('telemetry', (e) => this._event('peer.telemetry', e))
    this.pool.on('wsframe', (e) => this._event('peer.wsframe', e))
  }

  /**
   * A connection that just subscribed to mirror.progress gets the current lengths of every
   * mirrored core once, so a restarted bridge or listener needs no other resynchronisation.
   */
  _replayProgress (conn, before) {
    if (!this.blind || topicMatches(before, 'mirror.progress') || !conn.wants('mirror.progress')) return
    for (const data of this.blind.progressSnapshot()) this.rpc.pushTo(conn, 'mirror.progress', { ...data, at: Date.now() })
  }

  _event (name, data) {
    if (!this.rpc) return
    this.rpc.broadcast(name, { ...data, at: Date.now() })
  }

  /**
   * Requests a worker sends to the gateway. `/gateway/register` is unauthenticated on the
   * wire, so the bridge never accepts it itself: it is handed to Python as an event and
   * answered only with Python's reply, or 503 when no controller answers in time.
   */
  async _onInboundRequest ({ peerKey, protocol, request }) {
    if (request.path !== '/gateway/register') {
      return { statusCode: 404, body: { error: 'not-found' } }
    }
    if (request.method !== 'POST') return { statusCode: 405, body: { error: 'method-not-allowed' } }
    if (!this.rpc || !this.rpc.hasSubscribers('peer.register')) {
      return { statusCode: 503, body: { error: 'registration-unavailable' } }
    }
    let body = null
    let bodyBase64 = null
    try {
      body = JSON.parse(request.body.toString('utf8'))
    } catch {
      bodyBase64 = toBase64(request.body)
    }
    const registerId = randomBytes(12).toString('hex')
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.pendingRegisters.delete(registerId)
        resolve({ statusCode: 503, body: { error: 'registration-timeout' } })
      }, this.config.registerTimeoutMs)
      this.pendingRegisters.set(registerId, { resolve, timer, peerKey })
      this._event('peer.register', {
        registerId,
        peerKey,
        protocol,
        method: request.method,
        path: request.path,
        query: request.query,
        headers: request.headers,
        body,
        bodyBase64,
        deadlineMs: this.config.registerTimeoutMs
      })
    })
  }

  _registerMethods () {
    const rpc = this.rpc
    const pool = this.pool
    const wrap = (fn) => async (params, ctx) => {
      try {
        return await fn(params, ctx)
      } catch (err) {
        if (err instanceof PoolError || err instanceof BlindPeerError || err instanceof LeaseError) throw new RpcError(err.code, err.message)
        throw err
      }
    }

    rpc.register('ping', async () => ({ pong: true, time: Date.now(), uptimeMs: Date.now() - this.startedAt }))

    rpc.register('swarm.info', async () => this.swarmInfo())

    rpc.register('pool.status', async () => pool.status())

    rpc.register('events.subscribe', async (params, ctx) => {
      const topics = Array.isArray(params.topics) ? params.topics.filter((t) => typeof t === 'string') : null
      if (!topics || topics.length === 0) throw new RpcError('invalid-params', 'topics must be a non-empty list of strings')
      const before = new Set(ctx.conn.topics)
      for (const t of topics) ctx.conn.topics.add(t)
      // After the answer is written, so the replayed events follow it on the wire.
      if (ctx.conn.topics.size > before.size) setImmediate(() => rpc.subscribed(ctx.conn, before))
      return { subscribed: [...ctx.conn.topics] }
    })

    rpc.register('events.unsubscribe', async (params, ctx) => {
      const topics = Array.isArray(params.topics) ? params.topics : [...ctx.conn.topics]
      for (const t of topics) ctx.conn.topics.delete(t)
      return { subscribed: [...ctx.conn.topics] }
    })

    rpc.register('peer.connect', wrap(async (params) => {
      const entry = await pool.connect(normalizePeerKey(params.peerKey), { timeoutMs: optionalMs(params.timeoutMs, 'timeoutMs') })
      return { peerKey: entry.peerKey, protocol: entry.protocol, handshake: entry.remoteHandshake, initiator: entry.initiator }
    }))

    rpc.register('peer.request', wrap(async (params, ctx) => {
      const peerKey = normalizePeerKey(params.peerKey)
      if (typeof params.path !== 'string' || !params.path.startsWith('/')) {
        throw new RpcError('invalid-params', 'path must be a string starting with /')
      }
      const method = typeof params.method === 'string' ? params.method.toUpperCase() : 'GET'
      const headers = params.headers && typeof params.headers === 'object' && !Array.isArray(params.headers) ? params.headers : {}
      const res = await pool.request(peerKey, {
        method,
        path: params.path,
        headers,
        body: requestBody(params),
        timeoutMs: optionalMs(params.timeoutMs, 'timeoutMs'),
        connectTimeoutMs: optionalMs(params.connectTimeoutMs, 'connectTimeoutMs')
      })
      if (!params.stream) {
        if (res.body.length > MAX_INLINE_BODY) {
          // An inline body travels as one JSON line; past this size it must be streamed.
          throw new RpcError('too-large', `response body of ${res.body.length} bytes exceeds ${MAX_INLINE_BODY}; call again with stream: true`, { bodyLength: res.body.length, statusCode: res.statusCode })
        }
        return { statusCode: res.statusCode, headers: res.headers, bodyBase64: toBase64(res.body), bodyLength: res.body.length }
      }
      const limits = rpc.limits
      const chunkSize = Math.max(1024, Math.min(limits.maxChunkSize, Number(params.chunkSize) || limits.defaultChunkSize))
      const writer = ctx.openStream({ statusCode: res.statusCode, headers: res.headers, bodyLength: res.body.length }, { window: params.window })
      let chunks = 0
      for (let off = 0; off < res.body.length; off += chunkSize) {
        await writer.write(res.body.subarray(off, off + chunkSize))
        chunks++
      }
      return { done: true, bytes: res.body.length, chunks }
    }), { streaming: true })

    rpc.register('peer.health', wrap(async (params) => {
      const peerKey = normalizePeerKey(params.peerKey)
      const latencyMs = await pool.health(peerKey, { timeoutMs: optionalMs(params.timeoutMs, 'timeoutMs') })
      return { peerKey, ok: true, latencyMs }
    }))

    rpc.register('peer.disconnect', wrap(async (params) => {
      const peerKey = normalizePeerKey(params.peerKey)
      return { peerKey, disconnected: pool.disconnect(peerKey) }
    }))

    rpc.register('register.reply', async (params) => {
      const p = this.pendingRegisters.get(params.registerId)
      if (!p) throw new RpcError('not-found', 'unknown or expired registerId')
      const statusCode = Number(params.statusCode)
      if (!Number.isInteger(statusCode) || statusCode < 100 || statusCode > 599) {
        throw new RpcError('invalid-params', 'statusCode must be an HTTP status')
      }
      this.pendingRegisters.delete(params.registerId)
      clearTimeout(p.timer)
      let body = null
      if (typeof params.bodyBase64 === 'string') body = Buffer.from(params.bodyBase64, 'base64')
      else if (params.body !== undefined) body = params.body
      const headers = params.headers && typeof params.headers === 'object' ? params.headers : undefined
      p.resolve({ statusCode, headers, body })
      // Python answers 2xx only for a peer that a signed HTTP registration lists: that approval
      // is what lets a worker store cores on the gateway's blind peer. Python names the relays
      // (`blindPeerTrust: [{relayKey, keys?}]`) and the peer is trusted for those only; a caller
      // that names none gets the older unscoped trust.
      let trusted = false
      if (statusCode >= 200 && statusCode < 300 && this.blind && this.config.blindPeer.trustRegistered) {
        if (Array.isArray(params.blindPeerTrust)) {
          for (const scope of params.blindPeerTrust.slice(0, 1000)) {
            this.blind.trust.trustForRelay(p.peerKey, scope && scope.relayKey, scope ? scope.keys : undefined)
          }
          trusted = params.blindPeerTrust.length > 0
        } else {
          this.blind.trust.trustPeer(p.peerKey)
          trusted = true
        }
      }
      return { registerId: params.registerId, delivered: true, blindPeerTrusted: trusted }
    })

    this._registerBlindMethods(wrap)
    registerDriveMethods(rpc, { drives: () => this.drives, blind: () => this.blind, wrap })
  }

  _registerBlindMethods (wrap) {
    const rpc = this.rpc
    const blind = () => {
      if (!this.blind) throw new RpcError('unavailable', 'the blind peer is disabled (HYPERTUNA_BRIDGE_BLIND_PEER=off)')
      return this.blind
    }
    rpc.register('blindPeer.status', wrap(async () => this.blind ? this.blind.status() : { enabled: false }))
    rpc.register('blindPeer.trust', wrap(async (params) => params.relayKey === undefined || params.relayKey === null
      ? blind().trust.trustPeer(params.peerKey)
      : blind().trust.trustForRelay(params.peerKey, params.relayKey, params.keys)))
    rpc.register('blindPeer.untrust', wrap(async (params) => blind().trust.untrust({ peerKey: params.peerKey, relayKey: params.relayKey })))
    rpc.register('blindPeer.trustRelays', wrap(async (params) => blind().trust.setRelays(params.relays, { replaceAll: params.replaceAll === true })))
    rpc.register('blindPeer.gc', wrap(async (params) => blind().gc(typeof params.reason === 'string' ? params.reason.slice(0, 200) : 'manual')))
    rpc.register('blindPeer.deleteCore', wrap(async (params) => blind().deleteCore(params.coreKey, typeof params.reason === 'string' ? params.reason.slice(0, 200) : 'deleted')))
    rpc.register('mirror.list', wrap(async () => ({ cores: await blind().mirrorList() })))
    const leases = () => {
      if (!this.leases) throw new RpcError('unavailable', 'leased writes need the blind peer (HYPERTUNA_BRIDGE_BLIND_PEER=off)')
      return this.leases
    }
    // lease.open carries a secret key: its params are never logged or echoed (see LeaseManager).
    rpc.register('lease.open', wrap(async (params) => leases().open(params)))
    rpc.register('lease.append', wrap(async (params) => leases().append({ leaseId: params.leaseId, fencing: params.fencing, event: params.event })))
    rpc.register('lease.close', wrap(async (params) => leases().close({ leaseId: params.leaseId }, typeof params.reason === 'string' ? params.reason.slice(0, 100) : 'closed')))
    rpc.register('lease.status', wrap(async () => leases().status()))
    rpc.register('replica.readView', wrap(async (params) => blind().readView({
      relayKey: params.relayKey,
      viewCoreKey: params.viewCoreKey ?? null,
      startSeq: params.startSeq ?? 0,
      limit: params.limit ?? 1000
    })))
  }
}

export { RPC_PROTOCOL_VERSION, errorMessage }
