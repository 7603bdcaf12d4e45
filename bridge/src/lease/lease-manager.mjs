import { EventEmitter } from 'node:events'
import { createHash } from 'node:crypto'
import Corestore from 'corestore'
import RAM from 'random-access-memory'
import Autobase from 'autobase'
import BlindPeering from 'blind-peering'
import HyperDHT from 'hyperdht'
import c from 'compact-encoding'
import b4a from 'b4a'
import { openView, applyNodes } from '../worker/relay-store.mjs'
import { verifyEvent } from '../worker/nostr.mjs'
import { createSwarm } from '../swarm/bootstrap.mjs'
import { createLogger, errorMessage } from '../lib/log.mjs'

export class LeaseError extends Error {
  constructor (code, message) {
    super(message)
    this.code = code
  }
}

const LEASE_ID = /^[A-Za-z0-9._:-]{1,128}$/
const HEX64 = /^[0-9a-f]{64}$/
const RECENTLY_CLOSED = 1024

function toInt (v, name, { min = 0 } = {}) {
  if (!Number.isSafeInteger(v) || v < min) throw new LeaseError('invalid-params', `${name} must be an integer >= ${min}`)
  return v
}

/**
 * Leased writes: the bridge appends to a relay's Autobase as a writer whose key pair Python
 * unlocked from the escrow. Autobase 6.5.13 runs only on corestore 6 / hypercore 10 (this
 * package's main tree), separate from the blind peer's corestore 7.
 *
 * Key handling: the secret arrives in one RPC call, is copied into a buffer owned by the lease
 * and overwritten with zeros when the lease closes or expires. Each lease gets its own
 * in-memory corestore, because hypercore 10 writes a core's key pair (secret included) into the
 * core's on-disk header: a disk-backed store would persist the leased key. No log line, event or
 * error carries key material; errors are fixed strings.
 *
 * Replication: each lease's store connects to the gateway's blind peer with the blind-peering
 * client (as a worker does), which both downloads the relay's cores while every worker is
 * offline and mirrors the lease writer's core, so a returning worker finds the gateway's writes.
 */
export class LeaseManager extends EventEmitter {
  constructor ({ bootstrap, host, seed, blind, openTimeoutMs = 60_000, mirrorWaitMs = 15_000, logger }) {
    super()
    this.bootstrap = bootstrap
    this.host = host
    this.seed = seed
    this.blind = blind
    this.openTimeoutMs = openTimeoutMs
    this.mirrorWaitMs = mirrorWaitMs
    this.log = logger || createLogger('lease')
    this.leases = new Map()
    this.byRelay = new Map()
    this.closedRecently = new Map()
    this.swarm = null
  }

  async start () {
    const keyPair = HyperDHT.keyPair(createHash('sha256').update('hypertuna-lease-swarm\0').update(this.seed).digest())
    this.swarm = createSwarm({ bootstrap: this.bootstrap, host: this.host, keyPair })
    await this.swarm.dht.ready()
    // blind-peering connects with the DHT's default key pair, which createDht sets to this one.
    this.blind.trustInternal(keyPair.publicKey)
  }

  async stop () {
    for (const id of [...this.leases.keys()]) await this.close({ leaseId: id }, 'shutdown').catch(() => {})
    if (this.swarm) await this.swarm.destroy().catch(() => {})
  }

  status () {
    return {
      leases: [...this.leases.values()].map((l) => ({
        leaseId: l.leaseId,
        relayKey: l.relayKey,
        writerKey: l.writerKey,
        fencing: l.fencing,
        expiresAt: l.expiresAt,
        openedAt: l.openedAt,
        appends: l.appends,
        writerLength: l.base ? l.base.local.length : 0
      }))
    }
  }

  _remember (lease, reason) {
    this.closedRecently.set(lease.leaseId, { reason, fencing: lease.fencing, at: Date.now() })
    if (this.closedRecently.size > RECENTLY_CLOSED) this.closedRecently.delete(this.closedRecently.keys().next().value)
  }

  _parseOpen (params) {
    const { leaseId, relayKey, writerPublicKey, writerSecretKey } = params
    if (typeof leaseId !== 'string' || !LEASE_ID.test(leaseId)) throw new LeaseError('invalid-params', 'leaseId must be 1-128 characters of [A-Za-z0-9._:-]')
    if (typeof relayKey !== 'string' || !HEX64.test(relayKey)) throw new LeaseError('invalid-params', 'relayKey must be 64 lowercase hex')
    if (typeof writerPublicKey !== 'string' || !HEX64.test(writerPublicKey)) throw new LeaseError('invalid-params', 'writerPublicKey must be 64 lowercase hex')
    const fencing = toInt(params.fencing, 'fencing')
    const expiresAt = toInt(params.expiresAt, 'expiresAt', { min: 1 })
    if (expiresAt <= Date.now()) throw new LeaseError('lease-expired', 'expiresAt is in the past')
    if (typeof writerSecretKey !== 'string') throw new LeaseError('invalid-params', 'writerSecretKey must be base64 of a 64-byte Ed25519 secret key')
    const decoded = Buffer.from(writerSecretKey, 'base64')
    const secretKey = Buffer.alloc(64)
    try {
      if (decoded.length !== 64) throw new LeaseError('invalid-params', 'writerSecretKey must be base64 of a 64-byte Ed25519 secret key')
      decoded.copy(secretKey)
    } finally {
      decoded.fill(0)
    }
    const publicKey = Buffer.from(writerPublicKey, 'hex')
    // An Ed25519 secret key carries its public key in its last 32 bytes.
    if (!publicKey.equals(secretKey.subarray(32))) {
      secretKey.fill(0)
      throw new LeaseError('invalid-params', 'writerSecretKey does not belong to writerPublicKey')
    }
    return { leaseId, relayKey, fencing, expiresAt, keyPair: { publicKey, secretKey } }
  }

  async open (params) {
    const req = this._parseOpen(params)
    try {
      const current = this.leases.get(req.leaseId) || this.leases.get(this.byRelay.get(req.relayKey))
      if (current) {
        if (req.fencing < current.fencing) throw new LeaseError('stale-fencing', 'a lease with a newer fencing token is open for this relay')
        if (req.fencing === current.fencing && current.leaseId === req.leaseId) {
          current.expiresAt = req.expiresAt
          this._armExpiry(current)
          req.keyPair.secretKey.fill(0)
          return this._describe(current)
        }
        // A newer token supersedes the open lease (one writer per relay at a time).
        await this.close({ leaseId: current.leaseId }, 'superseded')
      }
      return await this._open(req)
    } catch (err) {
      req.keyPair.secretKey.fill(0)
      throw err
    }
  }

  async _open ({ leaseId, relayKey, fencing, expiresAt, keyPair }) {
    const relay = Buffer.from(relayKey, 'hex')
    // Every worker may be offline: the blind peer is the only source this lease replicates from.
    if ((await this.blind.heldLength(relay)) === 0) {
      throw new LeaseError('lease-unavailable', 'the blind peer holds no copy of this relay')
    }
    const store = new Corestore(() => new RAM())
    const lease = {
      leaseId,
      relayKey,
      fencing,
      expiresAt,
      keyPair,
      store,
      base: null,
      client: null,
      writerKey: null,
      openedAt: Date.now(),
      appends: 0,
      timer: null,
      queue: Promise.resolve(),
      closing: false
    }
    this.leases.set(leaseId, lease)
    this.byRelay.set(relayKey, leaseId)
    this._armExpiry(lease)
    try {
      lease.base = new Autobase(store, relay, { valueEncoding: c.any, open: openView, apply: applyNodes, keyPair })
      await lease.base.ready()
      lease.writerKey = b4a.toString(lease.base.local.key, 'hex')
      lease.client = new BlindPeering(this.swarm, store, { mirrors: [Buffer.from(this.blind.publicKey, 'hex')], pick: 1 })
      // Adding the writer core opens the connection that also replicates the relay's cores.
      const res = await this._withTimeout(lease.client.addCore(lease.base.local, lease.base.local.key, { announce: false, referrer: relay, priority: 1 }), 'the blind peer did not accept the lease writer core')
      if (!Array.isArray(res) || !res[0]) throw new LeaseError('lease-unavailable', 'the blind peer did not accept the lease writer core')
      const deadline = Date.now() + this.openTimeoutMs
      while (!lease.base.writable) {
        if (lease.closing) throw new LeaseError('closed', 'lease closed while opening')
        if (Date.now() > deadline) throw new LeaseError('lease-not-writable', 'the writer is not (yet) a writer of this relay as mirrored by the blind peer')
        await this._hint(lease)
        if (await this._surelyNotAWriter(lease)) throw new LeaseError('not-a-writer', 'this key is not a writer of the relay as mirrored by the blind peer')
        await new Promise((resolve) => setTimeout(resolve, 250))
      }
      await this._hint(lease)
      this.log.info('lease opened', { leaseId, relayKey, writerKey: lease.writerKey, fencing })
      return this._describe(lease)
    } catch (err) {
      await this.close({ leaseId }, 'open-failed').catch(() => {})
      if (err instanceof LeaseError) throw err
      throw new LeaseError('lease-unavailable', `cannot open the relay: ${errorMessage(err)}`)
    }
  }

  /**
   * True once this store has linearised the whole system core the blind peer holds and the
   * writer is still not listed: waiting longer cannot help until a worker adds it.
   */
  async _surelyNotAWriter (lease) {
    const system = lease.base.system.core
    const held = await this.blind.heldLength(system.key)
    if (held === 0 || system.indexedLength < held) return false
    for await (const { key } of lease.base.system.list()) {
      if (b4a.toString(key, 'hex') === lease.writerKey) return false
    }
    return true
  }

  _withTimeout (promise, message) {
    let timer
    return Promise.race([
      promise,
      new Promise((resolve, reject) => {
        timer = setTimeout(() => reject(new LeaseError('lease-unavailable', message)), this.openTimeoutMs)
      })
    ]).finally(() => clearTimeout(timer))
  }

  /**
   * The wakeup hint Autobase 6 needs: it learns of other writers' new blocks only through its
   * wakeup extension, which the blind peer does not speak; every writer in the system view is
   * hinted so their latest blocks are fetched and linearised before and after our appends.
   */
  async _hint (lease) {
    const hints = []
    for await (const { key } of lease.base.system.list()) hints.push({ key, length: -1 })
    if (hints.length) lease.base.hintWakeup(hints)
    await lease.base.update()
  }

  _armExpiry (lease) {
    clearTimeout(lease.timer)
    const ms = Math.max(0, lease.expiresAt - Date.now())
    lease.timer = setTimeout(() => {
      this.close({ leaseId: lease.leaseId }, 'expired').catch(() => {})
    }, Math.min(ms, 2 ** 31 - 1))
    lease.timer.unref()
  }

  _describe (lease) {
    return {
      leaseId: lease.leaseId,
      relayKey: lease.relayKey,
      writerKey: lease.writerKey,
      fencing: lease.fencing,
      expiresAt: lease.expiresAt,
      writable: !!(lease.base && lease.base.writable),
      viewLength: lease.base ? lease.base.view.core.length : 0
    }
  }

  _get (leaseId, fencing) {
    if (typeof leaseId !== 'string') throw new LeaseError('invalid-params', 'leaseId must be a string')
    const lease = this.leases.get(leaseId)
    if (!lease) {
      const closed = this.closedRecently.get(leaseId)
      if (closed && closed.reason === 'expired') throw new LeaseError('lease-expired', 'the lease has expired')
      throw new LeaseError('not-found', closed ? `the lease is closed (${closed.reason})` : 'no such lease')
    }
    toInt(fencing, 'fencing')
    if (fencing < lease.fencing) throw new LeaseError('stale-fencing', 'fencing token is older than the lease')
    if (fencing !== lease.fencing) throw new LeaseError('fencing-mismatch', 'fencing token does not match the lease')
    if (Date.now() >= lease.expiresAt) {
      this.close({ leaseId }, 'expired').catch(() => {})
      throw new LeaseError('lease-expired', 'the lease has expired')
    }
    return lease
  }

  async append ({ leaseId, fencing, event }) {
    const lease = this._get(leaseId, fencing)
    let ev
    let text
    if (typeof event === 'string') {
      text = event
      try {
        ev = JSON.parse(event)
      } catch {
        throw new LeaseError('invalid-params', 'event is not JSON')
      }
    } else {
      ev = event
      text = JSON.stringify(event)
    }
    const problem = verifyEvent(ev)
    if (problem) throw new LeaseError('invalid-params', `event refused: ${problem}`)
    // Appends of one lease run one at a time, so each result reports its own writer length.
    const run = lease.queue.then(() => this._append(lease, ev, text))
    lease.queue = run.catch(() => {})
    return run
  }

  async _append (lease, ev, text) {
    if (lease.closing) throw new LeaseError('not-found', 'the lease is closed')
    await this._hint(lease)
    const existing = await lease.base.view.get(Buffer.from(ev.id, 'hex'))
    if (existing) return { leaseId: lease.leaseId, eventId: ev.id, appended: false, duplicate: true, writerLength: lease.base.local.length, mirrored: true }
    await lease.base.append({ type: 'event', event: text })
    await lease.base.update()
    lease.appends++
    const writerLength = lease.base.local.length
    // Report whether the blind peer already holds the new block: only then does the write
    // survive this lease closing before any worker comes back.
    const deadline = Date.now() + this.mirrorWaitMs
    let mirrored = false
    while (!lease.closing && Date.now() < deadline) {
      if ((await this.blind.heldLength(lease.base.local.key)) >= writerLength) {
        mirrored = true
        break
      }
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
    return { leaseId: lease.leaseId, eventId: ev.id, appended: true, duplicate: false, writerLength, mirrored }
  }

  async close ({ leaseId }, reason = 'closed') {
    if (typeof leaseId !== 'string') throw new LeaseError('invalid-params', 'leaseId must be a string')
    const lease = this.leases.get(leaseId)
    if (!lease) return { leaseId, closed: false }
    lease.closing = true
    this.leases.delete(leaseId)
    if (this.byRelay.get(lease.relayKey) === leaseId) this.byRelay.delete(lease.relayKey)
    clearTimeout(lease.timer)
    this._remember(lease, reason)
    try {
      await lease.queue
      if (lease.client) await lease.client.close().catch(() => {})
      if (lease.base) await lease.base.close().catch(() => {})
      await lease.store.close().catch(() => {})
    } finally {
      // Overwrite the key bytes whatever happened above. Copies the libraries made of the key
      // pair live in the closed in-memory store and are released with it.
      lease.keyPair.secretKey.fill(0)
      lease.keyPair = null
    }
    this.log.info('lease closed', { leaseId, relayKey: lease.relayKey, reason })
    this.emit('lease.closed', { leaseId, relayKey: lease.relayKey, reason })
    return { leaseId, closed: true, reason }
  }
}
