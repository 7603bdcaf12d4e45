import path from 'node:path'
import { randomBytes } from 'node:crypto'
import { writeFileAtomic, readJsonIfExists } from '../lib/files.mjs'
import { idProblem, verifyEvent, filterProblem, matchFilters } from './nostr.mjs'
import { JSONH, NDJSON, ndjson } from './http.mjs'

/** Subscription ids real workers treat as one-shot fetches, answered without a NOTICE. */
const ONE_SHOT_SUB_PREFIXES = ['f-fetch-events', 'f-more', 'f-temporary']

/**
 * NIP-01 over the worker protocol: `POST /post/relay` (EVENT, REQ, CLOSE), client connections and their
 * subscriptions, live delivery (ws-frame push or the `/get/relay` poll queue) and the relay auth tokens
 * the gateway forwards as `x-auth-token` (ReferenceWorker methods).
 */
export class WorkerFrames {
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

  _auth (headers) {
    const token = headers['x-auth-token']
    if (typeof token !== 'string' || token === '') return { present: false, valid: false, pubkey: null }
    const entry = this.authTokens.get(token)
    return { present: true, valid: !!entry, pubkey: entry ? entry.pubkey : null }
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
        const { opened, frames } = await this._onReq(conn, frame)
        if (!opened) return { statusCode: 200, headers: NDJSON, body: ndjson(frames) }
        const reply = this._subscriptionNotice(frame[1])
        // Poll-only, like real workers: the stored events and EOSE wait for /get/relay (queued
        // before any live event of this subscription), and the reply carries at most the notice.
        if (this.opts.wsPush) reply.push(...frames)
        else conn.queue.push(...frames)
        return { statusCode: 200, headers: NDJSON, body: ndjson(reply) }
      }
      case 'CLOSE': {
        if (typeof frame[1] === 'string') conn.subs.delete(frame[1])
        const reply = this.opts.subscriptionNotices ? [['NOTICE', 'Subscription closed']] : []
        return { statusCode: 200, headers: NDJSON, body: ndjson(reply) }
      }
      default:
        return { statusCode: 200, headers: NDJSON, body: ndjson([['NOTICE', `unsupported: ${frame[0]} is not supported`]]) }
    }
  }

  async _onEvent (ev, auth) {
    const id = ev && typeof ev.id === 'string' ? ev.id : ''
    // Without verifySignatures (--memory-store) the id is checked but not the Schnorr signature, which
    // costs ~3 ms of CPU here; a gateway verifies every event before it forwards it.
    const problem = this.opts.verifySignatures ? verifyEvent(ev) : idProblem(ev)
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

  /**
   * The acknowledgement real workers answer a REQ with (none for their one-shot fetch ids), when
   * `subscriptionNotices` is on.
   */
  _subscriptionNotice (subId) {
    if (!this.opts.subscriptionNotices || ONE_SHOT_SUB_PREFIXES.some((p) => subId.startsWith(p))) return []
    return [['NOTICE', `Subscription ${subId} created/updated successfully`]]
  }

  /** Open a subscription: {opened, frames}, frames being its stored events and EOSE, or the refusal. */
  async _onReq (conn, frame) {
    const subId = frame[1]
    if (typeof subId !== 'string' || subId.length === 0 || subId.length > 64) {
      return { opened: false, frames: [['NOTICE', 'invalid: subscription id must be a non-empty string of at most 64 characters']] }
    }
    const filters = frame.slice(2)
    if (filters.length === 0) return { opened: false, frames: [['CLOSED', subId, 'invalid: REQ needs at least one filter']] }
    for (const f of filters) {
      const problem = filterProblem(f)
      if (problem) return { opened: false, frames: [['CLOSED', subId, `invalid: ${problem}`]] }
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
    return { opened: true, frames }
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
}
