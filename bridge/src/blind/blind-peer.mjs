import { EventEmitter } from 'node:events'
import fs from 'node:fs'
import path from 'node:path'
import { createHash } from 'node:crypto'
import { loadBlindModules } from './modules.mjs'
import { BlindPeerError } from './errors.mjs'
import { ReplicaReader, decodeViewValue } from './replica-reader.mjs'
import { TrustTable } from './trust.mjs'
import { ByteBudget } from './budget.mjs'
import { createSwarm } from '../swarm/bootstrap.mjs'
import { createLogger, errorMessage } from '../lib/log.mjs'


const hex = (buf) => Buffer.from(buf).toString('hex')
const TRUST_RECHECK_MS = 200
const MAX_HELD = 512

/**
 * The blind-peer server subclass that refuses `add-core` unless Python's trust decisions allow it
 * (see trust.mjs: which key may add which relay's cores). blind-peer 3.8.1 itself accepts cores from
 * anyone and uses `trustedPubKeys` only for announce and delete rights; the gateway must not store
 * cores for strangers, so both request paths (the legacy protomux-rpc `add-core` of blind-peering
 * 1.x and the muxer `cores` of 2.x) are gated here, before any record is written.
 */
function gatedBlindPeerClass (BlindPeer, service) {
  return class GatedBlindPeer extends BlindPeer {
    async _onaddcore (stream, record) {
      const reason = await service.admit(stream, () =>
        service.trust.check(stream.remotePublicKey, record.key, record.referrer || null))
      if (reason) {
        service._refused(stream.remotePublicKey, 1, reason)
        throw new Error(reason === 'untrusted' ? 'peer is not trusted to add cores' : `core refused: ${reason}`)
      }
      return super._onaddcore(stream, record)
    }

    async _onaddcores (stream, request) {
      const cores = request.cores || []
      const reason = await service.admit(stream, () => cores.length
        ? cores.map((c) => service.trust.check(stream.remotePublicKey, c.key, request.referrer || null)).find(Boolean) || null
        : (service.trust.isTrustedAtAll(stream.remotePublicKey) ? null : 'untrusted'))
      if (reason) {
        service._refused(stream.remotePublicKey, cores.length, reason)
        throw new Error(reason === 'untrusted' ? 'peer is not trusted to add cores' : `cores refused: ${reason}`)
      }
      return super._onaddcores(stream, request)
    }

    // blind-peer's byte-budget GC would clear relay view and writer cores and tell no one (budget.mjs).
    _gc () {
      return service.budget.run()
    }
  }
}

export { BlindPeerError, decodeViewValue }

export class BlindPeerService extends EventEmitter {
  constructor ({ storageDir, bootstrap, host, seed, maxBytes, cacheSize = 32, staleMs, progressIntervalMs = 1000, announceIntervalMs = 10000, trustWaitMs = 30000, logger }) {
    super()
    this.dir = path.join(storageDir, 'blind-peer')
    this.bootstrap = bootstrap
    this.host = host
    this.seed = seed
    this.maxBytes = maxBytes
    this.staleMs = staleMs
    this.progressIntervalMs = progressIntervalMs
    this.announceIntervalMs = announceIntervalMs
    this.log = logger || createLogger('blind-peer')
    this.trust = new TrustTable({ dir: this.dir, decodeKey: (value, name) => this.decodeKey(value, name) })
    this.refusals = new Map()
    this.trustWaitMs = trustWaitMs
    this.waiting = new Map() // remote key (hex) -> add requests held until trust arrives
    this.progress = new Map()
    this.remoteSeen = new Map()
    this.gcRunning = false
    this.lastGc = null
    this.refusedCount = 0
    this.reader = new ReplicaReader(this, { cacheSize })
    this.budget = new ByteBudget(this)
    this.m = null
    this.bp = null
    this.swarm = null
    this.timer = null
  }

  async start () {
    const m = this.m = loadBlindModules()
    fs.mkdirSync(this.dir, { recursive: true, mode: 0o700 })
    this.trust.load()
    // The blind peer's identity is derived from the gateway seed, so it is stable across
    // restarts (workers keep mirroring to the same key) yet distinct from the pool's key.
    const keyPair = m.hcrypto.keyPair(createHash('sha256').update('hypertuna-blind-peer\0').update(this.seed).digest())
    this.swarm = createSwarm({ bootstrap: this.bootstrap, host: this.host, keyPair, modules: m })
    const Gated = gatedBlindPeerClass(m.BlindPeer, this)
    this.bp = new Gated(path.join(this.dir, 'rocks'), {
      swarm: this.swarm,
      maxBytes: this.maxBytes,
      enableGc: true,
      // Kept empty on purpose: blind-peer's trusted keys may announce cores on the DHT and delete
      // any core remotely. Add rights are gated by `this.trust` instead.
      trustedPubKeys: []
    })
    this.bp.on('add-core', (record, _isNew, stream) => this._onAddCore(record, stream))
    this.bp.on('flush-error', (err) => this.log.warn('blind-peer flush failed', { error: errorMessage(err) }))
    this.bp.on('gc-done', ({ bytesCleared }) => { if (bytesCleared) this.log.info('blind-peer byte budget gc', { bytesCleared }) })
    await this.bp.ready()
    await this.swarm.dht.ready()
    await this.bp.listen()
    await this._snapshotProgress()
    this.timer = setInterval(() => this._progressTick(), this.progressIntervalMs)
    this.timer.unref()
    this.log.info('blind peer listening', { publicKey: this.publicKey })
  }

  async stop () {
    this.closing = true
    clearInterval(this.timer)
    await this.reader.close()
    if (this.bp) await this.bp.close().catch((err) => this.log.warn('blind-peer close failed', { error: errorMessage(err) }))
    if (this.swarm) await this.swarm.destroy().catch(() => {})
  }

  get publicKey () {
    return hex(this.swarm.keyPair.publicKey)
  }

  get encryptionKey () {
    return hex(this.bp.encryptionPublicKey)
  }

  handshakeFields () {
    return {
      blindPeerEnabled: true,
      blindPeerPublicKey: this.publicKey,
      blindPeerEncryptionKey: this.encryptionKey,
      blindPeerMaxBytes: this.maxBytes
    }
  }

  // ---- keys and trust ----

  /** 64-hex or z-base-32 → 32-byte Buffer; anything else is invalid-params. */
  decodeKey (value, name = 'key') {
    if (typeof value !== 'string') throw new BlindPeerError('invalid-params', `${name} must be 64-hex or a z-base-32 id`)
    try {
      const buf = this.m.IdEnc.decode(/^[0-9a-fA-F]{64}$/.test(value) ? value.toLowerCase() : value)
      if (buf.length === 32) return buf
    } catch {}
    throw new BlindPeerError('invalid-params', `${name} must be 64-hex or a z-base-32 id`)
  }

  /** The bridge's own lease swarm: trusted for this process only, never listed or persisted. */
  trustInternal (key) {
    this.trust.trustInternal(key)
  }

  /** How many contiguous blocks of a core the blind peer holds (0 when it holds none). */
  async heldLength (key) {
    const tracker = this.bp.activeReplication.get(hex(this.m.hcrypto.discoveryKey(key)))
    if (tracker && tracker.core.opened && !tracker.core.closing) return tracker.core.contiguousLength
    const [info] = await this.bp.store.storage.getInfos([this.m.hcrypto.discoveryKey(key)])
    if (!info || !info.head) return 0
    return info.hints && typeof info.hints.contiguousLength === 'number' ? info.hints.contiguousLength : info.head.length
  }

  /**
   * Decide an add request, holding it while the answer is "no" for at most `trustWaitMs`.
   *
   * A worker mirrors as soon as its relay exists, which is often before its signed HTTP registration
   * (the only source of trust) has reached Python and come back as `blindPeer.trust*`. Real workers
   * treat a refused `add-core` as an unhandled rejection and shut down, so refusing during that window
   * kills them. The request is therefore held, re-checked every 200 ms, and admitted the moment trust
   * arrives; it is refused only when the wait runs out, the connection closes, or the peer already has
   * `MAX_HELD` requests waiting. Nothing is stored while a request waits.
   */
  async admit (stream, decide) {
    let reason = decide()
    if (!reason || this.trustWaitMs <= 0) return reason
    const key = hex(stream.remotePublicKey)
    const held = this.waiting.get(key) || 0
    if (held >= MAX_HELD) return reason
    this.waiting.set(key, held + 1)
    try {
      const deadline = Date.now() + this.trustWaitMs
      while (reason && Date.now() < deadline && !stream.destroyed && !this.closing) {
        await new Promise((resolve) => setTimeout(resolve, TRUST_RECHECK_MS))
        reason = decide()
      }
      return reason
    } finally {
      const left = (this.waiting.get(key) || 1) - 1
      if (left > 0) this.waiting.set(key, left)
      else this.waiting.delete(key)
    }
  }

  /**
   * Refusals are counted, and logged at most once a minute per key with the count since the last
   * line (a worker's client retries every refused add-core several times).
   */
  _refused (remoteKey, cores, reason) {
    this.refusedCount++
    const peerKey = hex(remoteKey)
    const now = Date.now()
    const entry = this.refusals.get(peerKey) || { count: 0, cores: 0, loggedAt: 0 }
    entry.count++
    entry.cores += cores
    if (now - entry.loggedAt >= 60_000) {
      this.log.warn('add-core refused', { peerKey, reason, requests: entry.count, cores: entry.cores, trustedAtAll: this.trust.isTrustedAtAll(remoteKey) })
      entry.count = 0
      entry.cores = 0
      entry.loggedAt = now
    }
    this.refusals.set(peerKey, entry)
    if (this.refusals.size > 10_000) this.refusals.delete(this.refusals.keys().next().value)
  }

  // ---- events ----

  _onAddCore (record, stream) {
    const coreKey = hex(record.key)
    const referrer = record.referrer ? hex(record.referrer) : null
    // The blind peer learns nothing about a core's role. A relay's referrer is its Autobase key,
    // which is the creator's writer core, so that one case is known; Python merges the rest from
    // the worker's signed metadata.
    const type = referrer && referrer === coreKey ? 'writer' : 'unknown'
    this.emit('mirror.added', {
      coreKey,
      referrer,
      relayKey: referrer,
      type,
      ownerPeerKey: stream && stream.remotePublicKey ? hex(stream.remotePublicKey) : null,
      announce: !!record.announce,
      priority: record.priority || 0
    })
    if (referrer) this.reader.forgetRelay(referrer)
    this.budget.reannounce(coreKey)
  }

  /**
   * One `mirror.progress` report. `livePeers` is how many of the core's connected peers are its owner's
   * (see `_ownerPeers`) at the moment `remoteLength` was read: the gateway takes a report with
   * `livePeers > 0` as the owner's contact (escrow evidence), so only a live observation may carry it;
   * the start-up snapshot and replays never do. While the owner stays connected the report is repeated
   * every `announceIntervalMs` even when nothing changed, so the gateway knows the owner's last contact
   * to within that interval.
   */
  _emitProgress (coreKey, length, contiguousLength, remoteLength, { force = false, livePeers = 0 } = {}) {
    const remote = Math.max(remoteLength || 0, this.remoteSeen.get(coreKey) || 0)
    this.remoteSeen.set(coreKey, remote)
    const prev = this.progress.get(coreKey)
    const now = Date.now()
    const same = prev && prev.length === length && prev.contiguousLength === contiguousLength &&
      prev.remoteLength === remote && prev.livePeers === livePeers
    const announceDue = livePeers > 0 && prev && now - prev.updatedAt >= this.announceIntervalMs
    if (!force && same && !announceDue) return
    const data = { coreKey, length, contiguousLength, remoteLength: remote, livePeers, updatedAt: now }
    this.progress.set(coreKey, data)
    this.emit('mirror.progress', data)
  }

  /**
   * How many of a core's connected peers speak for its owner: peers whose key the trust table lets add
   * this core (the relay's registered peers and blind-peering keys, or operator-trusted keys). The
   * bridge's own lease swarm replicates the same cores and is never the owner; neither is a stranger
   * reading an announced core.
   */
  _ownerPeers (core, record) {
    let owners = 0
    for (const peer of core.peers) {
      const key = peer.remotePublicKey
      if (!key || this.trust.internal.has(hex(key))) continue
      if (this.trust.check(key, record.key, record.referrer || null) === null) owners++
    }
    return owners
  }

  /**
   * Once at start: every core the blind peer holds, with lengths from storage (no core is
   * opened for this). The records are kept and replayed to each new mirror.progress subscriber,
   * so a gateway that restarts the bridge or its listener gets one report per core.
   */
  async _snapshotProgress () {
    const records = await this.listRecords()
    this.budget.noteRecords(records)
    const batch = 64
    for (let i = 0; i < records.length; i += batch) {
      const slice = records.slice(i, i + batch)
      const infos = await this.bp.store.storage.getInfos(slice.map((r) => this.m.hcrypto.discoveryKey(r.key)))
      slice.forEach((r, j) => {
        const info = infos[j]
        const length = info && info.head ? info.head.length : 0
        const contiguous = info && info.hints && typeof info.hints.contiguousLength === 'number' ? info.hints.contiguousLength : length
        // Read from storage: no peer is involved, so this is never the owner's contact (livePeers 0).
        this._emitProgress(hex(r.key), length, Math.min(contiguous, length), Math.max(r.length || 0, length), { force: true })
      })
    }
  }

  /**
   * Throttled by the timer period: at most one report per core per tick, on change, and while the
   * owner is connected at least every `announceIntervalMs`.
   */
  _progressTick () {
    for (const tracker of this.bp.activeReplication.values()) {
      if (!tracker.record || tracker.destroyed) continue
      const core = tracker.core
      if (!core.opened || core.closing) continue
      let remote = 0
      // Any peer's length is a length some key holder signed, so it never overstates the owner's.
      for (const peer of core.peers) remote = Math.max(remote, peer.remoteLength || 0)
      const livePeers = this._ownerPeers(core, tracker.record)
      this._emitProgress(hex(core.key), core.length, core.contiguousLength, remote, { livePeers })
    }
  }

  progressSnapshot () {
    return [...this.progress.values()]
  }

  // ---- records, status ----

  async listRecords () {
    return this.bp.db.find('@blind-peer/cores', {}).toArray()
  }

  async status () {
    const digest = this.bp.digest || {}
    return {
      enabled: true,
      publicKey: this.publicKey,
      encryptionKey: this.encryptionKey,
      maxBytes: this.maxBytes,
      ...this.trust.summary(),
      bytesAllocated: digest.bytesAllocated || 0,
      cores: digest.cores || 0,
      referrers: digest.referrers || 0,
      activeCores: this.bp.activeReplication.size,
      refusedAddRequests: this.refusedCount,
      heldAddRequests: [...this.waiting.values()].reduce((a, b) => a + b, 0),
      stats: { ...this.bp.stats },
      gc: { running: this.gcRunning, last: this.lastGc, staleMs: this.staleMs, budget: this.budget.state() },
      cache: this.reader.cache.info(),
      versions: this.m.versions
    }
  }

  async mirrorList () {
    const records = await this.listRecords()
    return records.map((r) => ({
      coreKey: hex(r.key),
      referrer: r.referrer ? hex(r.referrer) : null,
      priority: r.priority,
      announce: r.announce,
      length: r.length,
      bytesAllocated: r.bytesAllocated,
      updatedAt: r.updated,
      activeAt: r.active,
      progress: this.progress.get(hex(r.key)) || null
    }))
  }

  // ---- deletion and hygiene ----

  /**
   * Delete one core: the same steps as blind-peer's remote `delete-core`, without a remote
   * stream (the request comes from Python). Open replica sessions of the core are closed first so
   * nothing reads it while it is cleared.
   */
  async deleteCore (coreKey, reason) {
    const key = this.decodeKey(coreKey, 'coreKey')
    const id = hex(key)
    const record = await this.bp.db.getCoreRecord(key)
    if (!record) return { coreKey: id, deleted: false }
    await this.reader.forgetCore(id)
    const core = this.bp.store.get({ key })
    await core.ready()
    try {
      const announced = this.bp.announcedCores.get(core.id)
      if (announced) {
        this.bp.swarm.leave(core.discoveryKey)
        await announced.close().catch(() => {})
        this.bp.announcedCores.delete(core.id)
      }
      const tracker = this.bp.activeReplication.get(hex(core.discoveryKey))
      if (tracker) await tracker.core.close().catch(() => {})
      await core.clear(0, core.length)
    } finally {
      await core.close().catch(() => {})
    }
    this.bp.db.deleteCore(key)
    await this.bp.flush()
    this.progress.delete(id)
    this.remoteSeen.delete(id)
    this.budget.forget(id)
    this.emit('mirror.removed', { coreKey: id, reason: reason || 'deleted' })
    return { coreKey: id, deleted: true }
  }

  /**
   * Hygiene run: the byte budget (budget.mjs: clears priority-0 cores above maxBytes, keeping their
   * records, reported as `mirror.removed` `gc-bytes`), then deletion of stale cores (never announced, priority 0,
   * no activity for staleMs). Decisions that need relay knowledge (which duplicate to keep) are
   * Python's, through blindPeer.deleteCore.
   */
  async gc (reason) {
    if (this.gcRunning) return { status: 'skipped', reason: 'running' }
    this.gcRunning = true
    const started = Date.now()
    try {
      const bytesBefore = this.bp.stats.bytesGcd
      await this.bp.flush()
      const budgetBytes = this.bp.stats.bytesGcd - bytesBefore
      const records = await this.listRecords()
      const cutoff = Date.now() - this.staleMs
      const evicted = []
      let bytesFreed = budgetBytes
      for (const r of records) {
        if (r.announce || (r.priority || 0) > 0) continue
        if ((r.active || r.updated || 0) > cutoff) continue
        const res = await this.deleteCore(hex(r.key), 'stale')
        if (res.deleted) {
          evicted.push(hex(r.key))
          bytesFreed += r.bytesAllocated || 0
        }
      }
      const result = {
        status: 'ok',
        reason: reason || 'manual',
        scanned: records.length,
        totalEvictions: evicted.length,
        bytesFreed,
        evictionReasons: evicted.length ? { stale: evicted.length } : {},
        evicted,
        budgetBytesCleared: budgetBytes,
        startedAt: started,
        durationMs: Date.now() - started
      }
      this.lastGc = result
      return result
    } finally {
      this.gcRunning = false
    }
  }

  // ---- replica reads ----

  resolveViewCore (relayKey) {
    return this.reader.resolveViewCore(relayKey)
  }

  readView (params) {
    return this.reader.readView(params)
  }
}
