import net from 'node:net'
import fs from 'node:fs'
import path from 'node:path'
import { createHmac, timingSafeEqual, randomBytes } from 'node:crypto'
import { createLogger, errorMessage } from '../lib/log.mjs'

export const RPC_PROTOCOL_VERSION = 1
export const SUPPORTED_VERSIONS = [1]

export const RPC_DEFAULTS = Object.freeze({
  maxLineBytes: 32 * 1024 * 1024,
  maxInFlight: 256,
  maxQueuedEvents: 10_000,
  defaultWindow: 8,
  maxWindow: 256,
  defaultChunkSize: 64 * 1024,
  maxChunkSize: 1024 * 1024,
  streamIdleTimeoutMs: 60_000
})

/** An error with a stable machine-readable code, sent to the client as {code, message}. */
export class RpcError extends Error {
  constructor (code, message, data) {
    super(message)
    this.code = code
    this.data = data
  }
}

function secretDigest (secret) {
  // Comparing fixed-length digests keeps the comparison constant-time whatever the length
  // of the presented secret.
  return createHmac('sha256', 'hypertuna-bridge-rpc').update(String(secret), 'utf8').digest()
}

export function topicMatches (topics, event) {
  for (const t of topics) {
    if (t === '*' || t === event) return true
    if (t.endsWith('*') && event.startsWith(t.slice(0, -1))) return true
  }
  return false
}

/**
 * Newline-delimited JSON RPC server for the Python gateway. Transport is a Unix socket
 * (file mode 0600) and/or loopback TCP guarded by a shared secret. See bridge/README.md
 * for the protocol.
 */
export class RpcServer {
  constructor ({ secret = null, logger, limits = {}, info = {}, onsubscribe = null } = {}) {
    this.secretDigest = secret ? secretDigest(secret) : null
    // Called with (conn, topicsBefore) whenever a connection's subscriptions grow, so state
    // snapshots (e.g. mirror progress) can be replayed to a subscriber that just arrived.
    this.onsubscribe = onsubscribe
    this.log = logger || createLogger('rpc')
    this.limits = { ...RPC_DEFAULTS, ...limits }
    this.info = info
    this.methods = new Map()
    this.connections = new Set()
    this.servers = []
    this.eventSeq = 0
    this._nextConnId = 1
  }

  /**
   * Register a method. `handler(params, ctx)` resolves the result; with `{ streaming: true }`
   * it may call `ctx.openStream(head)` and then `await writer.write(buffer)`.
   */
  register (name, handler, opts = {}) {
    this.methods.set(name, { handler, ...opts })
    return this
  }

  methodNames () {
    return [...this.methods.keys()].sort()
  }

  async listenUnix (socketPath) {
    const abs = path.resolve(socketPath)
    fs.mkdirSync(path.dirname(abs), { recursive: true, mode: 0o700 })
    await removeStaleSocket(abs)
    const server = net.createServer((sock) => this._accept(sock, 'unix'))
    // The socket file is created by listen() with the process umask; narrowing the umask
    // around listen() means it never exists with wider permissions, even for an instant.
    const prev = process.umask(0o177)
    try {
      await new Promise((resolve, reject) => {
        server.once('error', reject)
        server.listen(abs, () => {
          server.removeListener('error', reject)
          resolve()
        })
      })
    } finally {
      process.umask(prev)
    }
    fs.chmodSync(abs, 0o600)
    this.servers.push({ server, kind: 'unix', path: abs })
    return abs
  }

  async listenTcp (host, port) {
    if (!this.secretDigest) throw new Error('TCP RPC requires HYPERTUNA_BRIDGE_SECRET')
    if (!['127.0.0.1', '::1', 'localhost'].includes(host)) {
      throw new Error(`TCP RPC must bind a loopback address, not ${host}`)
    }
    const server = net.createServer((sock) => this._accept(sock, 'tcp'))
    await new Promise((resolve, reject) => {
      server.once('error', reject)
      server.listen(port, host, () => {
        server.removeListener('error', reject)
        resolve()
      })
    })
    const addr = server.address()
    this.servers.push({ server, kind: 'tcp', host: addr.address, port: addr.port })
    return addr
  }

  async close () {
    for (const conn of this.connections) conn.close()
    await Promise.all(this.servers.map(({ server, kind, path: p }) => new Promise((resolve) => {
      server.close(() => resolve())
      if (kind === 'unix') {
        try { fs.unlinkSync(p) } catch {}
      }
    })))
    this.servers = []
  }

  hasSubscribers (event) {
    for (const conn of this.connections) if (conn.wants(event)) return true
    return false
  }

  /** Push one event to a single connection (if it wants it); same framing and backpressure. */
  pushTo (conn, event, data) {
    if (!conn.wants(event)) return false
    conn.pushEvent({ event, seq: ++this.eventSeq, time: Date.now(), data })
    return true
  }

  /** Run the subscription hook after `conn` gained topics; hook errors never reach the caller. */
  subscribed (conn, topicsBefore) {
    if (!this.onsubscribe) return
    try {
      this.onsubscribe(conn, topicsBefore)
    } catch (err) {
      this.log.warn('subscription hook failed', { error: errorMessage(err) })
    }
  }

  /** Push an event to every authenticated connection subscribed to it; returns the count. */
  broadcast (event, data) {
    const frame = { event, seq: ++this.eventSeq, time: Date.now(), data }
    let n = 0
    for (const conn of this.connections) {
      if (conn.wants(event)) {
        conn.pushEvent(frame)
        n++
      }
    }
    return n
  }

  _accept (sock, transport) {
    if (transport === 'tcp') sock.setNoDelay(true)
    const conn = new RpcConnection(this, sock, transport, this._nextConnId++)
    this.connections.add(conn)
    sock.on('close', () => this.connections.delete(conn))
  }

  checkSecret (presented) {
    if (!this.secretDigest) return true
    if (typeof presented !== 'string' || presented.length === 0) return false
    return timingSafeEqual(this.secretDigest, secretDigest(presented))
  }

  requiresSecret (transport) {
    return transport === 'tcp' || this.secretDigest !== null
  }
}

async function removeStaleSocket (abs) {
  let st
  try {
    st = fs.lstatSync(abs)
  } catch (err) {
    if (err.code === 'ENOENT') return
    throw err
  }
  if (!st.isSocket()) throw new Error(`${abs} exists and is not a socket; refusing to replace it`)
  const alive = await new Promise((resolve) => {
    const s = net.connect(abs)
    s.once('connect', () => { s.destroy(); resolve(true) })
    s.once('error', () => resolve(false))
  })
  if (alive) throw new Error(`another bridge is already listening on ${abs}`)
  fs.unlinkSync(abs)
}

class RpcConnection {
  constructor (server, sock, transport, id) {
    this.server = server
    this.sock = sock
    this.transport = transport
    this.id = id
    this.log = server.log
    this.authenticated = false
    this.protocol = null
    this.clientName = null
    this.topics = new Set()
    this.inFlight = new Map()
    this.streams = new Map()
    this.eventQueue = []
    this.droppedEvents = 0
    this.closed = false
    this._buf = []
    this._bufBytes = 0
    this._discarding = false
    this._drainWaiters = []

    sock.on('data', (chunk) => this._ondata(chunk))
    sock.on('drain', () => this._ondrain())
    sock.on('error', (err) => this.log.debug('rpc socket error', { conn: id, error: errorMessage(err) }))
    sock.on('close', () => this._onclose())
  }

  wants (event) {
    return this.authenticated && !this.closed && topicMatches(this.topics, event)
  }

  close () {
    if (!this.closed) this.sock.end()
  }

  _onclose () {
    this.closed = true
    for (const s of this.streams.values()) s.abort(new RpcError('closed', 'connection closed'))
    this.streams.clear()
    for (const w of this._drainWaiters) w()
    this._drainWaiters = []
  }

  get writable () {
    return !this.closed && !this.sock.writableNeedDrain
  }

  _write (obj) {
    if (this.closed || this.sock.destroyed) return false
    return this.sock.write(JSON.stringify(obj) + '\n')
  }

  waitDrain () {
    if (this.writable || this.closed) return Promise.resolve()
    return new Promise((resolve) => this._drainWaiters.push(resolve))
  }

  _ondrain () {
    const waiters = this._drainWaiters
    this._drainWaiters = []
    for (const w of waiters) w()
    this._flushEvents()
  }

  /**
   * Events are never written past a full socket: they queue up to maxQueuedEvents and are
   * then dropped and counted, and the client learns the count through `events.dropped` so
   * it can resynchronise with pool.status instead of silently missing state changes.
   */
  pushEvent (frame) {
    if (this.eventQueue.length === 0 && this.droppedEvents === 0 && this.writable) {
      this._write(frame)
      return
    }
    if (this.eventQueue.length >= this.server.limits.maxQueuedEvents) {
      this.droppedEvents++
      return
    }
    this.eventQueue.push(frame)
  }

  _flushEvents () {
    while (this.writable && (this.eventQueue.length > 0 || this.droppedEvents > 0)) {
      if (this.droppedEvents > 0 && this.eventQueue.length === 0) {
        this._write({ event: 'events.dropped', seq: ++this.server.eventSeq, time: Date.now(), data: { count: this.droppedEvents } })
        this.droppedEvents = 0
        continue
      }
      this._write(this.eventQueue.shift())
    }
  }

  reply (id, result) {
    this._write({ id, ok: true, result: result === undefined ? null : result })
  }

  replyError (id, err) {
    // Only our own lowercase codes reach the client; system error codes (ENOENT, ...) and
    // plain exceptions are reported as 'internal'.
    const code = err && typeof err.code === 'string' && /^[a-z][a-z.-]*$/.test(err.code) ? err.code : 'internal'
    const error = { code, message: errorMessage(err) }
    if (err && err.data !== undefined) error.data = err.data
    this._write({ id: id === undefined ? null : id, ok: false, error })
  }

  _ondata (chunk) {
    let start = 0
    const max = this.server.limits.maxLineBytes
    while (start < chunk.length) {
      const nl = chunk.indexOf(10, start)
      if (nl === -1) {
        const rest = chunk.subarray(start)
        if (this._discarding) return
        this._buf.push(rest)
        this._bufBytes += rest.length
        if (this._bufBytes > max) {
          // Drop the oversized frame up to its newline and keep the connection usable.
          this._buf = []
          this._bufBytes = 0
          this._discarding = true
          this.replyError(null, new RpcError('frame-too-large', `frame exceeds ${max} bytes`))
        }
        return
      }
      const piece = chunk.subarray(start, nl)
      start = nl + 1
      if (this._discarding) {
        this._discarding = false
        continue
      }
      let line
      if (this._buf.length) {
        this._buf.push(piece)
        line = Buffer.concat(this._buf)
        this._buf = []
        this._bufBytes = 0
      } else {
        line = piece
      }
      if (line.length > max) {
        this.replyError(null, new RpcError('frame-too-large', `frame exceeds ${max} bytes`))
        continue
      }
      this._onframe(line)
    }
  }

  _onframe (line) {
    const text = line.toString('utf8').trim()
    if (text === '') return
    let msg
    try {
      msg = JSON.parse(text)
    } catch {
      this.replyError(null, new RpcError('parse-error', 'invalid JSON'))
      return
    }
    if (!msg || typeof msg !== 'object' || Array.isArray(msg) || typeof msg.method !== 'string') {
      const id = msg && typeof msg === 'object' ? msg.id : null
      this.replyError(id ?? null, new RpcError('invalid-request', 'expected {id, method, params}'))
      return
    }
    const id = msg.id
    const hasId = id !== undefined && id !== null
    if (hasId && typeof id !== 'number' && typeof id !== 'string') {
      this.replyError(null, new RpcError('invalid-request', 'id must be a number or string'))
      return
    }
    const params = msg.params === undefined || msg.params === null ? {} : msg.params
    if (typeof params !== 'object' || Array.isArray(params)) {
      if (hasId) this.replyError(id, new RpcError('invalid-params', 'params must be an object'))
      return
    }
    if (!hasId) {
      this._onnotification(msg.method, params)
      return
    }
    if (this.inFlight.has(id)) {
      this.replyError(id, new RpcError('invalid-request', 'duplicate request id in flight'))
      return
    }
    if (msg.method === 'hello') {
      this._hello(id, params)
      return
    }
    if (!this.authenticated) {
      this.replyError(id, new RpcError('unauthenticated', 'call hello first'))
      return
    }
    if (this.inFlight.size >= this.server.limits.maxInFlight) {
      this.replyError(id, new RpcError('overloaded', `more than ${this.server.limits.maxInFlight} requests in flight`))
      return
    }
    const method = this.server.methods.get(msg.method)
    if (!method) {
      this.replyError(id, new RpcError('unknown-method', `unknown method ${msg.method}`))
      return
    }
    this._dispatch(id, msg.method, method, params)
  }

  async _dispatch (id, name, method, params) {
    const ctx = {
      conn: this,
      id,
      openStream: (head, opts) => this._openStream(id, head, opts)
    }
    this.inFlight.set(id, ctx)
    try {
      const result = await method.handler(params, ctx)
      this.streams.delete(id)
      this.reply(id, result)
    } catch (err) {
      this.streams.delete(id)
      if (!(err instanceof RpcError) && !err.code) {
        this.log.error('rpc handler failed', { method: name, error: errorMessage(err) })
      }
      this.replyError(id, err)
    } finally {
      this.inFlight.delete(id)
    }
  }

  _hello (id, params) {
    const versions = Array.isArray(params.versions)
      ? params.versions
      : params.protocol !== undefined ? [params.protocol] : [RPC_PROTOCOL_VERSION]
    const chosen = versions.map(Number).filter((v) => SUPPORTED_VERSIONS.includes(v)).sort((a, b) => b - a)[0]
    if (!chosen) {
      this.replyError(id, new RpcError('unsupported-version', `supported protocol versions: ${SUPPORTED_VERSIONS.join(',')}`, { supported: SUPPORTED_VERSIONS }))
      return
    }
    if (this.server.requiresSecret(this.transport) && !this.server.checkSecret(params.secret)) {
      this.replyError(id, new RpcError('unauthenticated', 'invalid or missing secret'))
      // Close after the reply is flushed: a client presenting a bad secret gets no second try
      // on the same connection.
      this.sock.end()
      return
    }
    this.authenticated = true
    this.protocol = chosen
    this.clientName = typeof params.client === 'string' ? params.client.slice(0, 200) : null
    const topicsBefore = new Set(this.topics)
    if (Array.isArray(params.subscribe)) {
      for (const t of params.subscribe) if (typeof t === 'string') this.topics.add(t)
    }
    this.reply(id, {
      protocol: chosen,
      server: 'hypertuna-bridge',
      connection: this.id,
      methods: this.server.methodNames().concat(['hello']).sort(),
      notifications: ['stream.credit', 'stream.cancel'],
      subscribed: [...this.topics],
      limits: {
        maxLineBytes: this.server.limits.maxLineBytes,
        maxInFlight: this.server.limits.maxInFlight,
        maxQueuedEvents: this.server.limits.maxQueuedEvents
      },
      ...this.server.info
    })
    if (this.topics.size > topicsBefore.size) this.server.subscribed(this, topicsBefore)
  }

  _onnotification (method, params) {
    if (!this.authenticated) return
    const s = this.streams.get(params.id)
    if (method === 'stream.credit') {
      if (s) s.credit(Number(params.credits) || 0)
    } else if (method === 'stream.cancel') {
      if (s) s.abort(new RpcError('cancelled', 'stream cancelled by client'))
    }
  }

  _openStream (id, head, opts = {}) {
    const limits = this.server.limits
    const window = Math.max(1, Math.min(limits.maxWindow, Number(opts.window) || limits.defaultWindow))
    const s = new StreamWriter(this, id, window, limits.streamIdleTimeoutMs)
    this.streams.set(id, s)
    this._write({ id, stream: 'head', data: head })
    return s
  }
}

/**
 * Credit-based flow control for one streamed response: at most `credits` chunks are sent
 * ahead of the client's `stream.credit` notifications, and never past a full socket, so a
 * slow consumer holds back exactly one stream without stalling events or other calls.
 */
class StreamWriter {
  constructor (conn, id, window, idleTimeoutMs) {
    this.conn = conn
    this.id = id
    this.credits = window
    this.seq = 0
    this.bytes = 0
    this.error = null
    this.idleTimeoutMs = idleTimeoutMs
    this._wake = null
  }

  credit (n) {
    if (n <= 0) return
    this.credits += n
    this._notify()
  }

  abort (err) {
    if (!this.error) this.error = err
    this._notify()
  }

  _notify () {
    const w = this._wake
    this._wake = null
    if (w) w()
  }

  async write (buf) {
    while (!this.error && this.credits <= 0) {
      const waited = await new Promise((resolve) => {
        const timer = setTimeout(() => resolve(false), this.idleTimeoutMs)
        this._wake = () => { clearTimeout(timer); resolve(true) }
      })
      if (!waited && this.credits <= 0 && !this.error) {
        this.error = new RpcError('timeout', 'stream consumer gave no credit in time')
      }
    }
    if (this.error) throw this.error
    if (!this.conn.writable) await this.conn.waitDrain()
    if (this.conn.closed) throw new RpcError('closed', 'connection closed')
    this.credits--
    this.conn._write({ id: this.id, stream: 'chunk', seq: this.seq++, data: Buffer.from(buf).toString('base64') })
    this.bytes += buf.length
  }
}

export function randomId () {
  return randomBytes(8).toString('hex')
}
