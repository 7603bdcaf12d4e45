import { randomBytes } from 'node:crypto'
import { stableStringify, hmacHex } from '../lib/canonical.mjs'

/**
 * Signed registration envelope: {registration, signature} with an HMAC over canonical JSON.
 * `extra` adds top-level registration fields (real workers put `relayCores` and `relayCoresMode`
 * there); the signature covers them like the rest.
 */
export function buildRegistration ({ secret, relayKey, peers, metadata, extra = {}, now = Date.now(), nonce }) {
  const registration = {
    relayKey,
    nonce: nonce ?? randomBytes(12).toString('hex'),
    issuedAt: now,
    peers,
    metadata,
    ...extra
  }
  return { registration, signature: hmacHex(secret, stableStringify(registration)) }
}

export function buildSignedPayload (secret, payload) {
  return { payload, signature: hmacHex(secret, stableStringify(payload)) }
}

/**
 * HTTP client for the gateway's worker API. Every call has a deadline; a gateway that does
 * not answer must not wedge the worker's timers.
 */
export class Registrar {
  constructor ({ gatewayUrl, secret, timeoutMs = 10_000 }) {
    if (!gatewayUrl) throw new Error('gatewayUrl is required')
    if (!secret) throw new Error('shared secret is required')
    this.gatewayUrl = gatewayUrl.replace(/\/+$/, '')
    this.secret = secret
    this.timeoutMs = timeoutMs
    this.last = null
  }

  async _post (path, body) {
    const res = await fetch(this.gatewayUrl + path, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'application/json' },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(this.timeoutMs)
    })
    const text = await res.text()
    let json = null
    try {
      json = text ? JSON.parse(text) : null
    } catch {}
    return { status: res.status, ok: res.ok, json, text }
  }

  async register ({ relayKey, peers, metadata, extra }) {
    const envelope = buildRegistration({ secret: this.secret, relayKey, peers, metadata, extra })
    try {
      const res = await this._post('/api/relays', envelope)
      this.last = { at: Date.now(), status: res.status, ok: res.ok, error: res.ok ? null : (res.json?.error ?? res.text.slice(0, 200)) }
    } catch (err) {
      this.last = { at: Date.now(), status: null, ok: false, error: err.message }
    }
    return this.last
  }

  /** Signed blind-peer metadata: {payload, signature} with the same HMAC as registrations. */
  async postBlindPeerMetadata (payload) {
    try {
      const res = await this._post('/api/blind-peer/metadata', buildSignedPayload(this.secret, payload))
      return { at: Date.now(), status: res.status, ok: res.ok, error: res.ok ? null : (res.json?.error ?? res.text.slice(0, 200)) }
    } catch (err) {
      return { at: Date.now(), status: null, ok: false, error: err.message }
    }
  }

  /** Tell the gateway this worker holds what it wrote meanwhile (x-signature over {action, relayKey}). */
  async resyncComplete (relayKey) {
    const signature = hmacHex(this.secret, stableStringify({ action: 'resync-complete', relayKey }))
    const res = await fetch(`${this.gatewayUrl}/api/relays/${encodeURIComponent(relayKey)}/resync-complete`, {
      method: 'POST',
      headers: { 'x-signature': signature, accept: 'application/json' },
      signal: AbortSignal.timeout(this.timeoutMs)
    })
    await res.text()
    return { status: res.status, ok: res.ok }
  }

  async issueToken ({ relayKey, relayAuthToken, pubkey, scope = 'relay-access', ttlSeconds }) {
    const payload = { relayKey, relayAuthToken, pubkey, scope }
    if (ttlSeconds) payload.ttlSeconds = ttlSeconds
    const res = await this._post('/api/relay-tokens/issue', buildSignedPayload(this.secret, payload))
    if (!res.ok) {
      const err = new Error(`token issue failed with HTTP ${res.status}: ${res.json?.error ?? res.text.slice(0, 200)}`)
      err.status = res.status
      throw err
    }
    return res.json
  }
}
