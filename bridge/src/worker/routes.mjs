import { Router } from '../protocol/relay-protocol.mjs'
import { JSONH } from './http.mjs'

/** The worker-protocol routes a gateway calls, identification, health and telemetry (ReferenceWorker methods). */
export class WorkerRoutes {
  _buildRouter () {
    const r = new Router()
    r.add('POST', '/identify-gateway', (req) => this._identifyGateway(req))
    r.add('GET', '/health', () => ({ statusCode: 200, headers: JSONH, body: this._health() }))
    r.add('POST', '/relay/join', (req) => this._relayJoin(req))
    r.add('POST', '/register', () => ({ statusCode: 200, headers: JSONH, body: { status: 'acknowledged', timestamp: Date.now() } }))
    r.add('POST', '/post/relay/:identifier', (req) => this._postRelay(req))
    r.add('GET', '/get/relay/:identifier/:connectionKey', (req) => this._getRelay(req))
    r.add('POST', '/gateway/pending-writes', (req) => this._pendingWrites(req))
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

  async _drive (req) {
    let id = req.params.identifier
    if (!id.includes(':') && id.includes('/')) id = id.replace('/', ':')
    if (!this._resolve(id)) {
      return { statusCode: 404, headers: JSONH, body: { error: 'File not found' } }
    }
    return this.drive.serve(req, [this.identifier, this.relayKey])
  }
}
