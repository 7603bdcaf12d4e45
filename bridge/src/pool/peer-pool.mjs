import { EventEmitter } from 'node:events'
import b4a from 'b4a'
import { RelayChannel, RELAY_PROTOCOLS, ProtocolError } from '../protocol/relay-protocol.mjs'
import { createLogger, errorMessage } from '../lib/log.mjs'

export const POOL_DEFAULTS = Object.freeze({
  connectTimeoutMs: 15_000,
  handshakeTimeoutMs: 15_000,
  firstDataTimeoutMs: 3_000,
  identifyTimeoutMs: 30_000,
  requestTimeoutMs: 30_000,
  healthIntervalMs: 30_000,
  healthTimeoutMs: 5_000,
  // A request still unanswered after overdueProbeMs sends the worker a health check that must answer within
  // overdueProbeTimeoutMs; a silent worker (killed, frozen, its network gone: nothing closes the connection)
  // is then disconnected, failing its pending requests, instead of holding them until their timeout.
  overdueProbeMs: 1_000,
  overdueProbeTimeoutMs: 2_000,
  reconnectBaseMs: 1_000,
  reconnectMaxMs: 30_000
})

export class PoolError extends Error {
  constructor (code, message) {
    super(message)
    this.code = code
  }
}

export function normalizePeerKey (key) {
  if (typeof key !== 'string' || !/^[0-9a-fA-F]{64}$/.test(key)) {
    throw new PoolError('invalid-params', 'peerKey must be 64 hex characters')
  }
  return key.toLowerCase()
}

/**
 * Connection pool to workers over Hyperswarm. It dials by public key, opens the worker
 * protocol (current and legacy channel names at once, keeping whichever the worker speaks),
 * identifies itself with /identify-gateway, keeps wanted peers connected and reports facts
 * as events. It decides nothing about relays: callers choose whom to dial and what to send.
 *
 * Events: 'connected' {peerKey, protocol, handshake, initiator},
 *         'disconnected' {peerKey, reason, error},
 *         'health' {peerKey, ok, latencyMs, error},
 *         'telemetry' {peerKey, telemetry}, 'wsframe' {peerKey, frame}
 */
export class PeerPool extends EventEmitter {
  constructor ({ swarm, handshake, onInboundRequest = null, protocols = RELAY_PROTOCOLS, logger, ...opts } = {}) {
    super()
    this.swarm = swarm
    this.handshake = handshake
    this.onInboundRequest = onInboundRequest
    this.protocols = protocols
    this.opts = { ...POOL_DEFAULTS }
    for (const [k, v] of Object.entries(opts)) if (v !== undefined && k in POOL_DEFAULTS) this.opts[k] = v
    this.log = logger || createLogger('pool')
    this.peers = new Map()
    this.closing = false
    this._healthTimer = null
    this._healthRunning = false
    this._onConnection = (stream, info) => this._attach(stream, info)
  }

  get publicKey () {
    return b4a.toString(this.swarm.keyPair.publicKey, 'hex')
  }

  async start () {
    this.swarm.on('connection', this._onConnection)
    await this.swarm.dht.ready()
    // Listening lets workers that know the gateway key dial in as well; the gateway still
    // dials by key itself, so either side can establish the connection.
    await this.swarm.listen()
    if (this.opts.healthIntervalMs > 0) {
      this._healthTimer = setInterval(() => this._healthSweep(), this.opts.healthIntervalMs)
      this._healthTimer.unref()
    }
  }

  async close () {
    this.closing = true
    clearInterval(this._healthTimer)
    this.swarm.removeListener('connection', this._onConnection)
    for (const entry of this.peers.values()) {
      clearTimeout(entry.reconnectTimer)
      this._failWaiters(entry, new PoolError('closed', 'Bridge shutting down'))
      if (entry.stream) entry.stream.destroy()
    }
  }

  _entry (peerKey) {
    let entry = this.peers.get(peerKey)
    if (!entry) {
      entry = {
        peerKey,
        state: 'idle',
        wanted: false,
        stream: null,
        channel: null,
        channels: [],
        protocol: null,
        remoteHandshake: null,
        initiator: null,
        connectedAt: null,
        disconnectedAt: null,
        lastReason: null,
        lastError: null,
        lastHealth: null,
        lastTelemetryAt: null,
        attempts: 0,
        reconnectTimer: null,
        overdueProbe: null,
        waiters: new Set(),
        timers: []
      }
      this.peers.set(peerKey, entry)
    }
    return entry
  }

  /** Ensure a ready connection to `peerKey` and keep it (reconnecting on loss) until disconnect(). */
  connect (peerKey, { timeoutMs } = {}) {
    const key = normalizePeerKey(peerKey)
    if (this.closing) return Promise.reject(new PoolError('closed', 'Bridge shutting down'))
    if (key === this.publicKey) return Promise.reject(new PoolError('invalid-params', 'cannot dial own key'))
    const entry = this._entry(key)
    entry.wanted = true
    if (entry.state === 'ready') return Promise.resolve(entry)
    if (!entry.stream && entry.state !== 'dialing') {
      // An explicit request dials now instead of waiting out a reconnect backoff; concurrent
      // callers find the entry 'dialing' and share that attempt.
      clearTimeout(entry.reconnectTimer)
      entry.reconnectTimer = null
      this._dial(entry)
    }
    const ms = timeoutMs ?? this.opts.connectTimeoutMs + this.opts.handshakeTimeoutMs
    return new Promise((resolve, reject) => {
      const waiter = { resolve, reject, timer: null }
      waiter.timer = setTimeout(() => {
        entry.waiters.delete(waiter)
        if (!entry.stream && entry.state === 'dialing' && entry.waiters.size === 0) {
          // The attempt produced no connection at all; fall back to the backoff schedule.
          entry.state = 'idle'
          if (entry.wanted) this._scheduleReconnect(entry)
        }
        reject(new PoolError('peer-unavailable', entry.lastError ? `Connection timeout (${entry.lastError})` : 'Connection timeout'))
      }, ms)
      entry.waiters.add(waiter)
    })
  }

  _dial (entry) {
    if (this.closing) return
    entry.state = 'dialing'
    const key = b4a.from(entry.peerKey, 'hex')
    // leave + join resets Hyperswarm's per-peer attempt counter, which otherwise stops
    // retrying an explicit peer after five failed attempts.
    this.swarm.leavePeer(key)
    this.swarm.joinPeer(key)
  }

  _scheduleReconnect (entry) {
    if (!entry.wanted || this.closing || entry.reconnectTimer) return
    const base = this.opts.reconnectBaseMs * 2 ** Math.min(entry.attempts, 10)
    const delay = Math.min(this.opts.reconnectMaxMs, base) * (0.5 + Math.random() / 2)
    entry.attempts++
    entry.state = 'backoff'
    entry.reconnectTimer = setTimeout(() => {
      entry.reconnectTimer = null
      if (entry.wanted && !entry.stream && !this.closing) this._dial(entry)
    }, delay)
    entry.reconnectTimer.unref()
  }

  _resolveWaiters (entry) {
    for (const w of entry.waiters) {
      clearTimeout(w.timer)
      w.resolve(entry)
    }
    entry.waiters.clear()
  }

  _failWaiters (entry, err) {
    for (const w of entry.waiters) {
      clearTimeout(w.timer)
      w.reject(err)
    }
    entry.waiters.clear()
  }

  _clearTimers (entry) {
    for (const t of entry.timers) clearTimeout(t)
    entry.timers = []
  }

  _attach (stream, info) {
    const peerKey = b4a.toString(stream.remotePublicKey, 'hex')
    const entry = this._entry(peerKey)
    if (entry.stream && entry.stream !== stream) {
      // Hyperswarm already picked this stream over the old one and is closing the old one;
      // report the old session as replaced so callers can tell it from a real loss.
      this._detach(entry, entry.stream, 'duplicate-replacement', null)
    }
    clearTimeout(entry.reconnectTimer)
    entry.reconnectTimer = null
    entry.stream = stream
    entry.state = 'handshaking'
    entry.initiator = stream.isInitiator ? 'local' : 'remote'
    if (typeof stream.setKeepAlive === 'function') stream.setKeepAlive(5000)

    let streamError = null
    stream.on('error', (err) => {
      streamError = err
      this.log.debug('stream error', { peerKey, error: errorMessage(err) })
    })
    stream.on('close', () => {
      const reason = entry.closeReason || (streamError ? 'stream-error' : 'stream-close')
      this._detach(entry, stream, reason, streamError)
    })

    const channels = []
    for (const protocol of this.protocols) {
      const ch = RelayChannel.from(stream, {
        protocol,
        handshake: this.handshake,
        requestTimeoutMs: this.opts.requestTimeoutMs,
        healthTimeoutMs: this.opts.healthTimeoutMs,
        onrequest: (req) => this._inbound(entry, ch, req)
      })
      if (ch.closed) continue
      channels.push(ch)
      ch.once('open', () => this._onChannelOpen(entry, stream, ch))
      ch.on('telemetry', (telemetry) => {
        entry.lastTelemetryAt = Date.now()
        this.emit('telemetry', { peerKey, telemetry })
      })
      ch.on('wsframe', (frame) => this.emit('wsframe', { peerKey, frame }))
      ch.on('close', () => {
        if (entry.channel === ch && entry.stream === stream) {
          entry.closeReason = entry.closeReason || 'protocol-close'
          stream.destroy()
        }
      })
      ch.open()
    }
    entry.channels = channels

    // Loopback-testnet stall: the dialler can get a stream whose far end was already torn
    // down, and such a stream yields nothing until UDX gives up after ~13 s. A worker opens
    // its protocol channel immediately, so silence past firstDataTimeoutMs means a dead
    // stream: destroy it and let the reconnect path dial again.
    entry.timers.push(setTimeout(() => {
      if (entry.stream === stream && !entry.channel && stream.rawBytesRead === 0) {
        entry.closeReason = 'stalled'
        entry.lastError = 'no data on new connection'
        stream.destroy()
      }
    }, this.opts.firstDataTimeoutMs))
    entry.timers.push(setTimeout(() => {
      if (entry.stream === stream && !entry.channel) {
        entry.closeReason = 'handshake-timeout'
        entry.lastError = 'Protocol handshake timeout'
        stream.destroy()
      }
    }, this.opts.handshakeTimeoutMs))
  }

  async _onChannelOpen (entry, stream, ch) {
    if (entry.stream !== stream || entry.channel) {
      ch.close()
      return
    }
    entry.channel = ch
    entry.protocol = ch.protocol
    entry.remoteHandshake = ch.remoteHandshake
    for (const other of entry.channels) if (other !== ch) other.close()
    entry.state = 'identifying'
    try {
      const res = await ch.request({
        method: 'POST',
        path: '/identify-gateway',
        headers: { 'content-type': 'application/json' },
        body: {
          status: 'identified',
          payload: this.handshake,
          peer: this.publicKey,
          timestamp: new Date().toISOString()
        },
        timeoutMs: this.opts.identifyTimeoutMs
      })
      if (res.statusCode !== 200) {
        throw new PoolError('identify-failed', `identify-gateway answered ${res.statusCode}`)
      }
    } catch (err) {
      if (entry.stream === stream) {
        entry.closeReason = 'handshake-error'
        entry.lastError = errorMessage(err)
        stream.destroy()
      }
      return
    }
    if (entry.stream !== stream || ch.closed) return
    this._clearTimers(entry)
    entry.state = 'ready'
    entry.attempts = 0
    entry.connectedAt = Date.now()
    entry.closeReason = null
    entry.lastError = null
    this.emit('connected', {
      peerKey: entry.peerKey,
      protocol: ch.protocol,
      handshake: ch.remoteHandshake,
      initiator: entry.initiator
    })
    this._resolveWaiters(entry)
  }

  _detach (entry, stream, reason, err) {
    if (entry.stream !== stream) return
    const wasReady = entry.state === 'ready'
    this._clearTimers(entry)
    for (const ch of entry.channels) ch.close()
    entry.stream = null
    entry.channel = null
    entry.channels = []
    entry.closeReason = null
    entry.lastReason = reason
    entry.disconnectedAt = Date.now()
    if (err) entry.lastError = errorMessage(err)
    entry.state = 'idle'
    if (wasReady) {
      this.emit('disconnected', { peerKey: entry.peerKey, reason, error: err ? errorMessage(err) : null })
    }
    if (reason === 'duplicate-replacement') return
    if (entry.wanted) {
      this._scheduleReconnect(entry)
    } else if (entry.waiters.size === 0) {
      this.peers.delete(entry.peerKey)
    }
  }

  async _inbound (entry, ch, req) {
    if (!this.onInboundRequest) return { statusCode: 404, body: { error: 'not-found' } }
    return this.onInboundRequest({ peerKey: entry.peerKey, protocol: ch.protocol, request: req })
  }

  /** Send a worker-protocol request; dials first if needed. */
  async request (peerKey, { method, path, headers, body, timeoutMs, connectTimeoutMs } = {}) {
    if (typeof path !== 'string' || !path.startsWith('/')) {
      throw new PoolError('invalid-params', 'path must start with /')
    }
    const entry = await this.connect(peerKey, { timeoutMs: connectTimeoutMs })
    const ch = entry.channel
    if (!ch) throw new PoolError('peer-unavailable', 'Connection lost')
    const overdue = this.opts.overdueProbeMs > 0
      ? setTimeout(() => this._probeOverdue(entry, ch), this.opts.overdueProbeMs)
      : null
    try {
      return await ch.request({ method, path, headers, body, timeoutMs: timeoutMs ?? this.opts.requestTimeoutMs })
    } catch (err) {
      if (err instanceof ProtocolError) {
        throw new PoolError(err.code === 'timeout' ? 'peer-timeout' : 'peer-unavailable', err.message)
      }
      throw err
    } finally {
      clearTimeout(overdue)
    }
  }

  /** One health check at a time per connection, for its overdue requests (a failure disconnects). */
  _probeOverdue (entry, ch) {
    if (entry.channel !== ch || entry.overdueProbe) return
    entry.overdueProbe = this._checkHealth(entry, this.opts.overdueProbeTimeoutMs)
      .catch((err) => this.log.info('overdue request: the worker did not answer a health check', { peerKey: entry.peerKey, error: errorMessage(err) }))
      .finally(() => { entry.overdueProbe = null })
  }

  async health (peerKey, { timeoutMs } = {}) {
    const entry = await this.connect(peerKey)
    return this._checkHealth(entry, timeoutMs)
  }

  async _checkHealth (entry, timeoutMs) {
    const ch = entry.channel
    const stream = entry.stream
    try {
      if (!ch) throw new PoolError('peer-unavailable', 'Connection lost')
      const latencyMs = await ch.healthCheck(timeoutMs ?? this.opts.healthTimeoutMs)
      entry.lastHealth = { ok: true, latencyMs, at: Date.now() }
      this.emit('health', { peerKey: entry.peerKey, ok: true, latencyMs, error: null })
      return latencyMs
    } catch (err) {
      entry.lastHealth = { ok: false, latencyMs: null, at: Date.now(), error: errorMessage(err) }
      this.emit('health', { peerKey: entry.peerKey, ok: false, latencyMs: null, error: errorMessage(err) })
      if (stream && entry.stream === stream) {
        entry.closeReason = 'health-check-failed'
        stream.destroy()
      }
      throw new PoolError(err.code === 'timeout' ? 'peer-timeout' : 'peer-unavailable', errorMessage(err))
    }
  }

  async _healthSweep () {
    if (this._healthRunning || this.closing) return
    this._healthRunning = true
    try {
      // Hyperswarm stops retrying an explicit peer after a few failed attempts; a wanted peer
      // that is neither connected nor scheduled is dialled again here.
      for (const entry of this.peers.values()) {
        if (entry.wanted && !entry.stream && !entry.reconnectTimer) this._dial(entry)
      }
      // Sequential on purpose: a sweep must not add a burst of load to every worker at once.
      for (const entry of [...this.peers.values()]) {
        if (entry.state !== 'ready') continue
        await this._checkHealth(entry).catch(() => {})
      }
    } finally {
      this._healthRunning = false
    }
  }

  /** Stop keeping a peer: leave it in Hyperswarm and close the connection. */
  disconnect (peerKey, reason = 'manual-destroy') {
    const key = normalizePeerKey(peerKey)
    const entry = this.peers.get(key)
    this.swarm.leavePeer(b4a.from(key, 'hex'))
    if (!entry) return false
    entry.wanted = false
    clearTimeout(entry.reconnectTimer)
    entry.reconnectTimer = null
    this._failWaiters(entry, new PoolError('peer-unavailable', 'Disconnected on request'))
    if (entry.stream) {
      entry.closeReason = reason
      entry.stream.destroy()
    } else {
      this.peers.delete(key)
    }
    return true
  }

  /** Push a frame to a connected worker on message type 2. */
  sendWsFrame (peerKey, frame) {
    const entry = this.peers.get(normalizePeerKey(peerKey))
    if (!entry || entry.state !== 'ready') throw new PoolError('peer-unavailable', 'Peer not connected')
    return entry.channel.sendWsFrame(frame)
  }

  status () {
    const peers = []
    for (const e of this.peers.values()) {
      peers.push({
        peerKey: e.peerKey,
        state: e.state,
        wanted: e.wanted,
        protocol: e.protocol,
        initiator: e.initiator,
        connectedAt: e.connectedAt,
        disconnectedAt: e.disconnectedAt,
        lastReason: e.lastReason,
        lastError: e.lastError,
        lastHealth: e.lastHealth,
        lastTelemetryAt: e.lastTelemetryAt,
        reconnectAttempts: e.attempts,
        pendingRequests: e.channel ? e.channel.pendingCount : 0,
        remoteRole: e.remoteHandshake ? e.remoteHandshake.role ?? null : null
      })
    }
    return {
      publicKey: this.publicKey,
      connections: peers.filter((p) => p.state === 'ready').length,
      swarmConnections: this.swarm.connections.size,
      peers
    }
  }
}
