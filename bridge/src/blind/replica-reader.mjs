import { LruCache } from './lru.mjs'
import { BlindPeerError } from './errors.mjs'

const hex = (buf) => Buffer.from(buf).toString('hex')

/** Event records are the 32-byte keys of the worker view; everything else is index or state. */
const EVENT_KEY_BYTES = 32
const MAX_READ_LIMIT = 10_000

/**
 * Decode a view value: workers store c.any-tagged values (codecs >= 3.1 tags every value), older
 * writers plain UTF-8. A value that is not a tagged string is returned as its UTF-8 text.
 */
export function decodeViewValue (c, buf) {
  if (buf === null || buf === undefined) return null
  if (buf.length > 0 && buf[0] === 0x02) {
    try {
      const state = { start: 0, end: buf.length, buffer: buf }
      const v = c.any.decode(state)
      if (typeof v === 'string' && state.start === buf.length) return v
    } catch {}
  }
  return Buffer.from(buf).toString('utf8')
}

/**
 * The gateway's read side of the blind peer: mirrored relay views are read in-process from the
 * blind peer's store, through Hyperbee sessions kept in an LRU.
 */
export class ReplicaReader {
  constructor (service, { cacheSize = 32 } = {}) {
    this.service = service
    this.cache = new LruCache({
      max: cacheSize,
      // Closing the bee closes its core session; the blind peer's own sessions stay open. A
      // session evicted while a read still walks it is closed when that read finishes.
      onevict: (session) => {
        session.evicted = true
        if (session.reads === 0) return session.bee.close()
      }
    })
    this.viewByRelay = new Map()
  }

  async close () {
    await this.cache.clear()
  }

  /** A core is going away: drop its session and any relay → view mapping to it. */
  async forgetCore (id) {
    await this.cache.delete(id)
    for (const [relay, view] of this.viewByRelay) if (view === id) this.viewByRelay.delete(relay)
  }

  /** A relay gained a core: its view may have changed, resolve it again on the next read. */
  forgetRelay (referrer) {
    this.viewByRelay.delete(referrer)
  }

  async _held (key) {
    const record = await this.service.bp.db.getCoreRecord(key)
    if (record) return true
    const [info] = await this.service.bp.store.storage.getInfos([this.service.m.hcrypto.discoveryKey(key)])
    return !!info
  }

  async _session (key) {
    const id = hex(key)
    const cached = this.cache.get(id)
    if (cached) return cached
    const core = this.service.bp.store.get({ key })
    await core.ready()
    const bee = new this.service.m.Hyperbee(core, { keyEncoding: 'binary', valueEncoding: 'binary', extension: false })
    await bee.ready()
    const session = { core, bee, openedAt: Date.now(), reads: 0, evicted: false }
    // A concurrent read may have opened the same core meanwhile; keep one session.
    const raced = this.cache.peek(id)
    if (raced) {
      await bee.close().catch(() => {})
      return this.cache.get(id)
    }
    this.cache.set(id, session)
    return session
  }

  /**
   * Without a view key, the relay's view is found among the cores mirrored with the relay key as
   * referrer: the Hyperbee that holds the worker layout's time index. With several (an indexer
   * change leaves the old view behind) the longest wins.
   */
  async resolveViewCore (relayKey) {
    let referrer
    try {
      referrer = this.service.decodeKey(relayKey, 'relayKey')
    } catch {
      return null
    }
    const rid = hex(referrer)
    const known = this.viewByRelay.get(rid)
    if (known) return Buffer.from(known, 'hex')
    const records = (await this.service.listRecords()).filter((r) => r.referrer && hex(r.referrer) === rid)
    let best = null
    for (const r of records) {
      let s = null
      try {
        s = await this._session(r.key)
        s.reads++
        const readable = Math.min(s.core.length, s.core.contiguousLength)
        if (readable < 2) continue
        const snap = s.bee.snapshot()
        try {
          const hit = await snap.peek({ gte: Buffer.from('created_at:'), lt: Buffer.from('created_at;') }, { wait: false })
          if (hit && (!best || readable > best.readable)) best = { key: r.key, readable }
        } finally {
          await snap.close().catch(() => {})
        }
      } catch {
        // Not a Hyperbee (a writer or drive core) or not readable yet: not the view.
      } finally {
        if (s) {
          s.reads--
          if (s.evicted && s.reads === 0) await s.bee.close().catch(() => {})
        }
      }
    }
    if (!best) return null
    this.viewByRelay.set(rid, hex(best.key))
    return best.key
  }

  async readView ({ relayKey, viewCoreKey, startSeq, limit }) {
    if (!Number.isInteger(startSeq) || startSeq < 0) throw new BlindPeerError('invalid-params', 'startSeq must be a non-negative integer')
    if (!Number.isInteger(limit) || limit < 1) throw new BlindPeerError('invalid-params', 'limit must be a positive integer')
    limit = Math.min(limit, MAX_READ_LIMIT)
    let key
    if (viewCoreKey === null || viewCoreKey === undefined || viewCoreKey === '') {
      key = await this.resolveViewCore(relayKey)
      if (!key) throw new BlindPeerError('replica-not-found', 'no view core is known for this relay')
    } else {
      key = this.service.decodeKey(viewCoreKey, 'viewCoreKey')
    }
    if (!(await this._held(key))) throw new BlindPeerError('core-unavailable', 'the blind peer does not hold this core')
    const session = await this._session(key)
    session.reads++
    try {
      return await this._read(session, key, startSeq, limit)
    } finally {
      session.reads--
      if (session.evicted && session.reads === 0) await session.bee.close().catch(() => {})
    }
  }

  async _read ({ core, bee }, key, startSeq, limit) {
    // Only blocks held locally are readable: the mirrored view core carries only signed
    // (indexed) blocks, and a gap would make the read wait for a peer that may never come.
    const length = Math.min(core.length, core.contiguousLength)
    const result = { viewCoreKey: hex(key), length, nextSeq: startSeq, entries: [] }
    if (startSeq >= length) return result
    const end = Math.min(startSeq + limit, length)
    for await (const node of bee.createHistoryStream({ gte: startSeq, lt: end, wait: false })) {
      if (node.seq < startSeq || node.seq >= end) continue
      const k = node.key
      if (!k || k.length !== EVENT_KEY_BYTES) continue
      result.entries.push({
        seq: node.seq,
        type: node.type,
        key: hex(k),
        value: node.type === 'put' ? decodeViewValue(this.service.m.c, node.value) : null
      })
    }
    result.nextSeq = end
    return result
  }
}
