import { EventEmitter } from 'node:events'
import Protomux from 'protomux'
import c from 'compact-encoding'

/** Protomux protocol names of the worker protocol, newest first. */
export const RELAY_PROTOCOL = 'hyperpipe-relay-v2'
export const LEGACY_RELAY_PROTOCOL = 'hypertuna-relay-v2'
export const RELAY_PROTOCOLS = [RELAY_PROTOCOL, LEGACY_RELAY_PROTOCOL]

/** Message indexes on the channel; the order is the wire contract. */
export const MSG = Object.freeze({
  REQUEST: 0,
  RESPONSE: 1,
  WS_FRAME: 2,
  HEALTH: 3,
  HEALTH_RESPONSE: 4,
  TELEMETRY: 5
})

export const DEFAULT_REQUEST_TIMEOUT_MS = 30_000
export const DEFAULT_HEALTH_TIMEOUT_MS = 5_000

export class ProtocolError extends Error {
  constructor (code, message) {
    super(message)
    this.code = code
  }
}

/** Bodies travel as arrays of byte values; accept the other shapes receivers tolerate. */
export function decodeBody (body) {
  if (body === null || body === undefined) return Buffer.alloc(0)
  if (Array.isArray(body)) return Buffer.from(body)
  if (typeof body === 'string') return Buffer.from(body, 'utf8')
  if (body && body.type === 'Buffer' && Array.isArray(body.data)) return Buffer.from(body.data)
  if (Buffer.isBuffer(body) || body instanceof Uint8Array) return Buffer.from(body)
  return Buffer.from(JSON.stringify(body), 'utf8')
}

export function encodeBody (body) {
  if (body === null || body === undefined) return null
  if (Buffer.isBuffer(body) || body instanceof Uint8Array) return Array.from(body)
  if (typeof body === 'string') return Array.from(Buffer.from(body, 'utf8'))
  return Array.from(Buffer.from(JSON.stringify(body), 'utf8'))
}

export function baseHandshake ({ isServer }) {
  return {
    version: '2.0',
    isServer: !!isServer,
    capabilities: ['http', 'websocket', 'health', 'telemetry']
  }
}

/**
 * One worker-protocol channel on a Protomux. Both sides use this class: the bridge as the
 * dialling gateway, the reference worker as the serving peer. Requests and health checks
 * share one id counter per side; responses are matched only against this side's pending map.
 *
 * Events: 'open' (remoteHandshake), 'close' (isRemote), 'wsframe' (json), 'telemetry' (json).
 * Inbound requests go to `onrequest(req)` which must resolve to {statusCode, headers, body}.
 */
export class RelayChannel extends EventEmitter {
  constructor (mux, {
    protocol = RELAY_PROTOCOL,
    handshake = {},
    requestTimeoutMs = DEFAULT_REQUEST_TIMEOUT_MS,
    healthTimeoutMs = DEFAULT_HEALTH_TIMEOUT_MS,
    onrequest = null
  } = {}) {
    super()
    this.protocol = protocol
    this.handshake = handshake
    this.remoteHandshake = null
    this.requestTimeoutMs = requestTimeoutMs
    this.healthTimeoutMs = healthTimeoutMs
    this.onrequest = onrequest
    this.opened = false
    this.closed = false
    this._nextId = 0
    this._pending = new Map()

    this.channel = mux.createChannel({
      protocol,
      id: null,
      handshake: c.json,
      onopen: (remote) => this._onopen(remote),
      onclose: (isRemote) => this._onclose(isRemote)
    })
    if (this.channel === null) {
      // Protomux refuses a second channel for the same protocol on one connection.
      this.closed = true
      return
    }
    this._send = [
      this.channel.addMessage({ encoding: c.json, onmessage: (m) => this._onrequest(m) }),
      this.channel.addMessage({ encoding: c.json, onmessage: (m) => this._onresponse(m) }),
      this.channel.addMessage({ encoding: c.json, onmessage: (m) => this.emit('wsframe', m) }),
      this.channel.addMessage({ encoding: c.json, onmessage: (m) => this._onhealth(m) }),
      this.channel.addMessage({ encoding: c.json, onmessage: (m) => this._onresponse(m) }),
      this.channel.addMessage({ encoding: c.json, onmessage: (m) => this.emit('telemetry', m) })
    ]
  }

  static from (stream, opts) {
    return new RelayChannel(Protomux.from(stream), opts)
  }

  open () {
    if (this.channel) this.channel.open(this.handshake)
  }

  close () {
    if (this.channel && !this.closed) this.channel.close()
  }

  get pendingCount () {
    return this._pending.size
  }

  /** Send a request; resolves {statusCode, headers, body: Buffer}. */
  request ({ method = 'GET', path, headers = {}, body = null, timeoutMs } = {}) {
    if (!this.opened || this.closed) {
      return Promise.reject(new ProtocolError('channel-closed', 'Channel closed'))
    }
    const id = this._nextId++
    const ms = timeoutMs ?? this.requestTimeoutMs
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(id)
        reject(new ProtocolError('timeout', 'Request timeout'))
      }, ms)
      this._pending.set(id, {
        kind: 'request',
        timer,
        resolve: (m) => resolve({
          statusCode: Number(m.statusCode) || 200,
          headers: m.headers && typeof m.headers === 'object' ? m.headers : {},
          body: decodeBody(m.body)
        }),
        reject
      })
      this._send[MSG.REQUEST].send({ id, method, path, headers, body: encodeBody(body) })
    })
  }

  /** Protocol-level health check; resolves the round-trip latency in ms. */
  healthCheck (timeoutMs) {
    if (!this.opened || this.closed) {
      return Promise.reject(new ProtocolError('channel-closed', 'Channel closed'))
    }
    const id = this._nextId++
    const started = process.hrtime.bigint()
    const ms = timeoutMs ?? this.healthTimeoutMs
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(id)
        reject(new ProtocolError('timeout', 'Health check timeout'))
      }, ms)
      this._pending.set(id, {
        kind: 'health',
        timer,
        resolve: (m) => {
          if (m.status !== 'healthy') {
            reject(new ProtocolError('unhealthy', `peer reported status ${m.status}`))
            return
          }
          resolve(Number(process.hrtime.bigint() - started) / 1e6)
        },
        reject
      })
      this._send[MSG.HEALTH].send({ id, timestamp: new Date().toISOString() })
    })
  }

  sendWsFrame (frame) {
    if (!this.opened || this.closed) return false
    this._send[MSG.WS_FRAME].send(frame)
    return true
  }

  sendTelemetry (payload) {
    if (!this.opened || this.closed) return false
    this._send[MSG.TELEMETRY].send(payload)
    return true
  }

  _onopen (remote) {
    this.opened = true
    this.remoteHandshake = remote && typeof remote === 'object' ? remote : {}
    this.emit('open', this.remoteHandshake)
  }

  _onclose (isRemote) {
    if (this.closed) return
    this.closed = true
    const pending = [...this._pending.values()]
    this._pending.clear()
    for (const p of pending) {
      clearTimeout(p.timer)
      p.reject(new ProtocolError('channel-closed', 'Channel closed'))
    }
    this.emit('close', isRemote)
  }

  _onresponse (m) {
    if (!m || typeof m !== 'object') return
    const p = this._pending.get(m.id)
    if (!p) return
    this._pending.delete(m.id)
    clearTimeout(p.timer)
    p.resolve(m)
  }

  _onhealth (m) {
    if (!m || typeof m !== 'object' || this.closed) return
    this._send[MSG.HEALTH_RESPONSE].send({
      id: m.id,
      status: 'healthy',
      timestamp: new Date().toISOString(),
      services: { relay: 'active', protocol: 'connected' }
    })
  }

  async _onrequest (m) {
    if (!m || typeof m !== 'object') return
    const rawPath = typeof m.path === 'string' ? m.path : '/'
    const q = rawPath.indexOf('?')
    const req = {
      id: m.id,
      method: String(m.method || 'GET').toUpperCase(),
      path: q === -1 ? rawPath : rawPath.slice(0, q),
      query: q === -1 ? {} : parseQuery(rawPath.slice(q + 1)),
      headers: lowerKeys(m.headers),
      body: decodeBody(m.body)
    }
    let res
    try {
      if (!this.onrequest) throw new ProtocolError('not-found', 'No handler')
      res = await this.onrequest(req)
      if (!res) res = { statusCode: 404, body: { error: 'not-found' } }
    } catch (err) {
      res = { statusCode: 500, body: { error: err.message || 'internal error' } }
    }
    if (this.closed) return
    this._send[MSG.RESPONSE].send({
      id: m.id,
      statusCode: res.statusCode ?? 200,
      headers: res.headers ?? (res.body && !Buffer.isBuffer(res.body) && typeof res.body === 'object'
        ? { 'content-type': 'application/json' }
        : {}),
      body: encodeBody(res.body)
    })
  }
}

export function parseQuery (qs) {
  const out = {}
  for (const part of qs.split('&')) {
    if (!part) continue
    const eq = part.indexOf('=')
    const k = eq === -1 ? part : part.slice(0, eq)
    const v = eq === -1 ? '' : part.slice(eq + 1)
    try {
      out[decodeURIComponent(k)] = decodeURIComponent(v.replace(/\+/g, ' '))
    } catch {
      out[k] = v
    }
  }
  return out
}

function lowerKeys (headers) {
  const out = {}
  if (headers && typeof headers === 'object') {
    for (const [k, v] of Object.entries(headers)) out[String(k).toLowerCase()] = v
  }
  return out
}

/**
 * Path router with `:param` segments; segment counts must match exactly. Unmatched requests
 * go to `fallback`.
 */
export class Router {
  constructor () {
    this.routes = []
    this.fallback = null
  }

  add (method, pattern, fn) {
    this.routes.push({ method: method && method.toUpperCase(), parts: pattern.split('/'), fn })
    return this
  }

  async handle (req) {
    const parts = req.path.split('/')
    let wrongMethod = false
    for (const r of this.routes) {
      if (r.parts.length !== parts.length) continue
      const params = {}
      let ok = true
      for (let i = 0; i < parts.length; i++) {
        if (r.parts[i].startsWith(':')) {
          try {
            params[r.parts[i].slice(1)] = decodeURIComponent(parts[i])
          } catch {
            params[r.parts[i].slice(1)] = parts[i]
          }
        } else if (r.parts[i] !== parts[i]) {
          ok = false
          break
        }
      }
      if (!ok) continue
      if (r.method && r.method !== req.method) {
        wrongMethod = true
        continue
      }
      return r.fn({ ...req, params })
    }
    if (wrongMethod) return { statusCode: 405, body: { error: 'method-not-allowed' } }
    if (this.fallback) return this.fallback(req)
    return { statusCode: 404, body: { error: 'not-found' } }
  }
}
