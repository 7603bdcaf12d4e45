import BlindPeering from 'blind-peering'
import b4a from 'b4a'
import { createLogger, errorMessage } from '../lib/log.mjs'

const RETRY_MIN_MS = 1000
const RETRY_MAX_MS = 30_000

/**
 * Asks one blind peer (the gateway's) to keep the relay's cores, with blind-peering 1.15.0 on
 * the worker's corestore 6: the version whose `add-core` RPC answers with the server's record,
 * so a refusal (e.g. the gateway has not trusted this worker yet) is seen and retried.
 *
 * Autobase 6.5.13 has no `views()`/`wakeupCapability`, so blind-peering's addAutobase cannot
 * be used; every core is added explicitly with the relay key as referrer: the writer cores,
 * the system core, the `autobee` view core, and the Hyperdrive's metadata and blobs cores.
 * Each added core keeps an open session, which keeps the blind-peer connection (and live
 * replication of new blocks) alive.
 */
export class RelayMirror {
  constructor ({ swarm, store, relay, drive, blindPeerKey, registrar = null, identifier, ownerPeerKey, logger, onAccepted = null }) {
    this.swarm = swarm
    this.store = store
    this.relay = relay
    this.drive = drive
    this.blindPeerKey = blindPeerKey
    this.registrar = registrar
    this.identifier = identifier
    this.ownerPeerKey = ownerPeerKey
    this.log = logger || createLogger('worker.mirror')
    this.client = new BlindPeering(swarm, store, { mirrors: [b4a.from(blindPeerKey, 'hex')], pick: 1 })
    this.cores = new Map()
    this.closed = false
    this.syncing = null
    this.retryMs = RETRY_MIN_MS
    this.retryTimer = null
    this.metadataTimer = null
    this.lastMetadata = null
    this.onAccepted = onAccepted
  }

  /** Every core the relay consists of right now, with its role for the gateway's metadata. */
  async collectCores () {
    const info = this.relay.info()
    const out = [
      { key: info.viewKey, type: 'autobase-view', priority: 1 },
      { key: info.systemKey, type: 'autobase-system', priority: 1 },
      { key: info.localKey, type: 'writer', priority: 1 }
    ]
    for (const key of await this.relay.writerKeys()) out.push({ key, type: 'writer', priority: 1 })
    const d = this.drive.drive
    if (d.core) out.push({ key: b4a.toString(d.core.key, 'hex'), type: 'hyperdrive-metadata', priority: 0 })
    if (d.blobs && d.blobs.core) out.push({ key: b4a.toString(d.blobs.core.key, 'hex'), type: 'hyperdrive-blobs', priority: 0 })
    const seen = new Set()
    return out.filter((c) => c.key && !seen.has(c.key) && seen.add(c.key))
  }

  start () {
    this.sync()
  }

  /** Add every core not yet accepted; runs once at a time, retries with backoff on refusal. */
  sync () {
    if (this.closed) return Promise.resolve()
    if (this.syncing) {
      this.resyncWanted = true
      return this.syncing
    }
    this.syncing = this._sync()
      .catch((err) => this.log.warn('mirror sync failed', { error: errorMessage(err) }))
      .finally(() => {
        this.syncing = null
        if (this.resyncWanted && !this.closed) {
          this.resyncWanted = false
          this.sync()
        }
      })
    return this.syncing
  }

  async _sync () {
    await this.swarm.dht.ready()
    const referrer = b4a.from(this.relay.key, 'hex')
    let failed = 0
    let added = 0
    for (const c of await this.collectCores()) {
      if (this.closed) return
      const known = this.cores.get(c.key)
      if (known && known.accepted) continue
      const session = this.store.get({ key: b4a.from(c.key, 'hex') })
      await session.ready()
      const res = await this.client.addCore(session, session.key, { announce: false, referrer, priority: c.priority })
      if (Array.isArray(res) && res[0]) {
        this.cores.set(c.key, { ...c, session, accepted: true })
        added++
      } else {
        // blind-peering swallows the error and answers [undefined]; a new session is needed
        // for a retry because the client remembers the core object it already tried.
        await session.close().catch(() => {})
        failed++
      }
    }
    if (failed) {
      this.log.warn('blind peer refused or did not answer; retrying', { failed, retryMs: this.retryMs })
      clearTimeout(this.retryTimer)
      this.retryTimer = setTimeout(() => this.sync(), this.retryMs)
      this.retryTimer.unref()
      this.retryMs = Math.min(this.retryMs * 2, RETRY_MAX_MS)
    } else {
      this.retryMs = RETRY_MIN_MS
    }
    if (added && this.onAccepted) this.onAccepted()
    if (added) await this.postMetadata()
  }

  metadataPayload () {
    const cores = [...this.cores.values()].filter((c) => c.accepted).map((c) => ({
      coreKey: c.key,
      type: c.type,
      announce: false,
      priority: c.priority,
      length: c.session.length
    }))
    return {
      relayKey: this.relay.key,
      publicIdentifier: this.identifier,
      ownerPeerKey: this.ownerPeerKey,
      issuedAt: Date.now(),
      cores
    }
  }

  /** Signed metadata to the gateway; lengths let it measure how far the mirror is behind. */
  async postMetadata () {
    if (!this.registrar || this.closed) return null
    const payload = this.metadataPayload()
    if (payload.cores.length === 0) return null
    this.lastMetadata = await this.registrar.postBlindPeerMetadata(payload)
    if (!this.lastMetadata.ok) this.log.warn('blind-peer metadata refused', { status: this.lastMetadata.status, error: this.lastMetadata.error })
    return this.lastMetadata
  }

  /** After the relay changed: new cores are added, and lengths reported at most once a second. */
  onRelayChanged () {
    if (this.closed) return
    this.sync()
    if (this.metadataTimer) return
    this.metadataTimer = setTimeout(() => {
      this.metadataTimer = null
      this.postMetadata().catch(() => {})
    }, 1000)
    this.metadataTimer.unref()
  }

  status () {
    return {
      blindPeerKey: this.blindPeerKey,
      cores: [...this.cores.values()].map((c) => ({ coreKey: c.key, type: c.type, accepted: c.accepted, length: c.session.length })),
      lastMetadata: this.lastMetadata
    }
  }

  async close () {
    this.closed = true
    clearTimeout(this.retryTimer)
    clearTimeout(this.metadataTimer)
    await this.client.close().catch(() => {})
    for (const c of this.cores.values()) await c.session.close().catch(() => {})
  }
}
