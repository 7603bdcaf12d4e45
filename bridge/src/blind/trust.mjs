import path from 'node:path'
import { writeFileAtomic, readJsonIfExists } from '../lib/files.mjs'
import { BlindPeerError } from './errors.mjs'

const HEX64 = /^[0-9a-f]{64}$/

/**
 * Who may add cores to the gateway's blind peer, and which cores. Python decides; this table only
 * applies its decisions.
 *
 * - **Relay scopes** (what Python sets): for a relay, the keys trusted to mirror its cores (the swarm
 *   keys of its registered peers, the `blindPeeringPublicKey`s its signed registrations announce) and
 *   the relay's own keys (its key when hex, the cores it declared or that were attributed to it). A
 *   scoped key may add a core whose `referrer` is one of the relay's keys; a core without referrer
 *   only when the relay declared it, or when no relay the table knows declared it (a worker's drive,
 *   a new view core not re-declared yet: without a referrer the blind peer attributes it to no relay).
 *   A core with the referrer of another relay, or another relay's declared core, is refused: a key
 *   trusted for relay A can never mirror into relay B.
 * - **Unscoped keys** (operator trust, `blindPeer.trust` without `relayKey`): any core.
 * - **Internal keys** (the bridge's own lease swarm): any core, this process only, never persisted.
 *
 * Persisted in `trusted-relays.json` (0600) so a bridge restart keeps serving; Python's periodic
 * reconcile (`blindPeer.trustRelays` with `replaceAll`) heals anything missed while it was down.
 */
export class TrustTable {
  constructor ({ dir, decodeKey }) {
    this.file = path.join(dir, 'trusted-relays.json')
    this.decodeKey = decodeKey
    this.unscoped = new Map() // peer hex -> {trustedSince}
    this.internal = new Set()
    this.relays = new Map() // relayKey -> {peers: Map<peer hex, trustedSince>, keys: Set<hex>, updatedAt}
    this.byPeer = new Map() // peer hex -> Set<relayKey>
    this.declaredBy = new Map() // core hex -> Set<relayKey>
  }

  // ---- persistence ----

  load () {
    const data = readJsonIfExists(this.file)
    if (!data) return
    for (const p of Array.isArray(data.peers) ? data.peers : []) {
      if (p && HEX64.test(p.key)) this.unscoped.set(p.key, { trustedSince: p.trustedSince || Date.now() })
    }
    for (const r of Array.isArray(data.relays) ? data.relays : []) {
      if (!r || typeof r.relayKey !== 'string') continue
      const peers = new Map()
      for (const p of Array.isArray(r.peers) ? r.peers : []) if (p && HEX64.test(p.key)) peers.set(p.key, p.trustedSince || Date.now())
      const keys = (Array.isArray(r.keys) ? r.keys : []).filter((k) => HEX64.test(k))
      this._put(r.relayKey, peers, keys, r.updatedAt || Date.now())
    }
  }

  save () {
    const peers = [...this.unscoped].map(([key, v]) => ({ key, trustedSince: v.trustedSince }))
    const relays = [...this.relays].map(([relayKey, s]) => ({
      relayKey,
      peers: [...s.peers].map(([key, trustedSince]) => ({ key, trustedSince })),
      keys: [...s.keys],
      updatedAt: s.updatedAt
    }))
    writeFileAtomic(this.file, JSON.stringify({ version: 2, peers, relays }) + '\n', 0o600)
  }

  // ---- parameters ----

  _hex (value, name) {
    return Buffer.from(this.decodeKey(value, name)).toString('hex')
  }

  _relayKey (value) {
    if (typeof value !== 'string' || !value || value.length > 200) {
      throw new BlindPeerError('invalid-params', 'relayKey must be a relay key (64-hex or npub…:name)')
    }
    return value
  }

  _list (value, name, max) {
    if (value === undefined || value === null) return []
    if (!Array.isArray(value) || value.length > max) {
      throw new BlindPeerError('invalid-params', `${name} must be a list of at most ${max} keys`)
    }
    return [...new Set(value.map((v) => this._hex(v, name)))]
  }

  // ---- index ----

  _drop (relayKey) {
    const scope = this.relays.get(relayKey)
    if (!scope) return false
    for (const peer of scope.peers.keys()) {
      const set = this.byPeer.get(peer)
      if (set) {
        set.delete(relayKey)
        if (!set.size) this.byPeer.delete(peer)
      }
    }
    for (const key of scope.keys) {
      const set = this.declaredBy.get(key)
      if (set) {
        set.delete(relayKey)
        if (!set.size) this.declaredBy.delete(key)
      }
    }
    this.relays.delete(relayKey)
    return true
  }

  _put (relayKey, peers, keys, updatedAt = Date.now()) {
    this._drop(relayKey)
    if (!peers.size) return
    const scope = { peers, keys: new Set(keys), updatedAt }
    this.relays.set(relayKey, scope)
    for (const peer of peers.keys()) {
      if (!this.byPeer.has(peer)) this.byPeer.set(peer, new Set())
      this.byPeer.get(peer).add(relayKey)
    }
    for (const key of scope.keys) {
      if (!this.declaredBy.has(key)) this.declaredBy.set(key, new Set())
      this.declaredBy.get(key).add(relayKey)
    }
  }

  // ---- decisions Python sends ----

  /** Unscoped (operator) trust: that key may add any core. */
  trustPeer (peerKey) {
    const key = this._hex(peerKey, 'peerKey')
    if (!this.unscoped.has(key)) {
      this.unscoped.set(key, { trustedSince: Date.now() })
      this.save()
    }
    return { peerKey: key, trusted: true, trustedSince: this.unscoped.get(key).trustedSince }
  }

  /** Add one key to a relay's scope; `keys`, when given, replace the relay's own keys. */
  trustForRelay (peerKey, relayKey, keys) {
    const peer = this._hex(peerKey, 'peerKey')
    const relay = this._relayKey(relayKey)
    const scope = this.relays.get(relay)
    const peers = new Map(scope ? scope.peers : [])
    if (!peers.has(peer)) peers.set(peer, Date.now())
    const ownKeys = keys === undefined ? [...(scope ? scope.keys : [])] : this._list(keys, 'keys', 4096)
    this._put(relay, peers, ownKeys)
    this.save()
    return { peerKey: peer, relayKey: relay, trusted: true, trustedSince: peers.get(peer), keys: ownKeys.length }
  }

  /**
   * Replace the scope of each listed relay (`peerKeys` empty or missing: the relay is dropped). With
   * `replaceAll`, every relay not listed is dropped too (Python's reconcile). Unscoped trust is kept.
   */
  setRelays (entries, { replaceAll = false } = {}) {
    if (!Array.isArray(entries) || entries.length > 100_000) {
      throw new BlindPeerError('invalid-params', 'relays must be a list of {relayKey, peerKeys, keys}')
    }
    const parsed = entries.map((e) => ({
      relayKey: this._relayKey(e && e.relayKey),
      peers: this._list(e.peerKeys, 'peerKeys', 1024),
      keys: this._list(e.keys, 'keys', 4096)
    }))
    if (replaceAll) {
      const listed = new Set(parsed.map((e) => e.relayKey))
      for (const relayKey of [...this.relays.keys()]) if (!listed.has(relayKey)) this._drop(relayKey)
    }
    for (const e of parsed) {
      const before = this.relays.get(e.relayKey)
      const peers = new Map(e.peers.map((p) => [p, (before && before.peers.get(p)) || Date.now()]))
      this._put(e.relayKey, peers, e.keys)
    }
    this.save()
    return { relays: this.relays.size, peers: this.byPeer.size }
  }

  /** Withdraw: a key everywhere, a key from one relay, or a whole relay scope. */
  untrust ({ peerKey, relayKey } = {}) {
    let removed = false
    const relay = relayKey === undefined || relayKey === null ? null : this._relayKey(relayKey)
    const peer = peerKey === undefined || peerKey === null ? null : this._hex(peerKey, 'peerKey')
    if (!peer && !relay) {
      throw new BlindPeerError('invalid-params', 'peerKey or relayKey is required')
    }
    if (peer && !relay) {
      removed = this.unscoped.delete(peer) || removed
      for (const r of [...(this.byPeer.get(peer) || [])]) removed = this._removePeer(r, peer) || removed
    } else if (peer) {
      removed = this._removePeer(relay, peer)
    } else {
      removed = this._drop(relay)
    }
    if (removed) this.save()
    return { peerKey: peer, relayKey: relay, trusted: false, removed }
  }

  _removePeer (relayKey, peer) {
    const scope = this.relays.get(relayKey)
    if (!scope || !scope.peers.has(peer)) return false
    const peers = new Map(scope.peers)
    peers.delete(peer)
    this._put(relayKey, peers, [...scope.keys], scope.updatedAt)
    return true
  }

  trustInternal (key) {
    this.internal.add(Buffer.from(key).toString('hex'))
  }

  // ---- the gate ----

  isTrustedAtAll (remoteKey) {
    const id = Buffer.from(remoteKey).toString('hex')
    return this.internal.has(id) || this.unscoped.has(id) || this.byPeer.has(id)
  }

  /**
   * May `remoteKey` add `coreKey` with `referrer` (Buffers; referrer may be null)? Returns a reason
   * code when not: `untrusted`, `referrer-out-of-scope`, `core-out-of-scope`.
   */
  check (remoteKey, coreKey, referrer) {
    const id = Buffer.from(remoteKey).toString('hex')
    if (this.internal.has(id) || this.unscoped.has(id)) return null
    const relays = this.byPeer.get(id)
    if (!relays) return 'untrusted'
    if (referrer) {
      const ref = Buffer.from(referrer).toString('hex')
      for (const r of relays) if (this.relays.get(r).keys.has(ref)) return null
      return 'referrer-out-of-scope'
    }
    const core = Buffer.from(coreKey).toString('hex')
    const owners = this.declaredBy.get(core)
    if (!owners) return null
    for (const r of owners) if (relays.has(r)) return null
    return 'core-out-of-scope'
  }

  summary () {
    const peers = new Map()
    for (const [key, v] of this.unscoped) peers.set(key, { key, trustedSince: v.trustedSince, unscoped: true, relays: [] })
    for (const [relayKey, scope] of this.relays) {
      for (const [key, since] of scope.peers) {
        const entry = peers.get(key) || { key, trustedSince: since, unscoped: false, relays: [] }
        entry.trustedSince = Math.min(entry.trustedSince, since)
        entry.relays.push(relayKey)
        peers.set(key, entry)
      }
    }
    return {
      trustedPeers: [...peers.values()],
      trustedRelays: [...this.relays].map(([relayKey, s]) => ({ relayKey, peers: s.peers.size, keys: s.keys.size, updatedAt: s.updatedAt }))
    }
  }
}
