import { EventEmitter } from 'node:events'
import Autobase from 'autobase'
import Hyperbee from 'hyperbee'
import c from 'compact-encoding'
import b4a from 'b4a'
import { DELETION_KIND, addressOf, answerFilters, compareNewestFirst, isEphemeral, matchFilter, replaceKey, supersedes } from './nostr.mjs'

const MAX_CREATED_AT = 9999999999

export const padKind = (k) => String(k).padStart(5, '0')
export const padTs = (t) => String(t).padStart(10, '0')

/** Index keys of one event, exactly as the worker view lays them out. */
export function indexKeys (ev) {
  const ts = padTs(ev.created_at)
  const keys = [
    `kind:${padKind(ev.kind)}:created_at:${ev.created_at}:id:${ev.id}`,
    `pubkey:${ev.pubkey}:created_at:${ts}:id:${ev.id}`,
    `created_at:${ts}:id:${ev.id}`
  ]
  for (const tag of ev.tags) {
    if (tag.length >= 2 && /^[a-zA-Z]$/.test(tag[0])) {
      keys.push(`tagKey:${tag[0]}:tagValue:${tag[1]}:created_at:${ts}:id:${ev.id}`)
    }
  }
  return keys
}

/** The view: one Hyperbee named 'autobee', raw byte keys, c.any values. */
export function openView (viewStore) {
  return new Hyperbee(viewStore.get('autobee'), { extension: false, valueEncoding: c.any })
}

/**
 * Apply oplog nodes to the view. Only the operations this worker appends are interpreted;
 * unknown operation types are skipped so a reader never stalls on them. A malformed event
 * payload from any writer is skipped rather than thrown, because apply also runs on every
 * reader replaying the log.
 */
export async function applyNodes (nodes, view, host) {
  const batch = view.batch({ update: false })
  for (const node of nodes) {
    const op = node.value
    if (!op || typeof op !== 'object') continue
    if (op.type === 'addWriter' && typeof op.key === 'string' && /^[0-9a-f]{64}$/.test(op.key)) {
      await batch.flush()
      // Workers add indexers by default. `indexer: false` is used for the gateway writer and
      // failover hosts: with a second indexer the view is signed only when both have acked, so
      // an offline one would freeze the mirrored (signed) view that replicas read.
      await host.addWriter(b4a.from(op.key, 'hex'), { indexer: op.indexer !== false })
      continue
    }
    if (op.type === 'event' && typeof op.event === 'string') {
      let ev
      try {
        ev = JSON.parse(op.event)
      } catch {
        continue
      }
      if (!ev || typeof ev.id !== 'string' || !/^[0-9a-f]{64}$/.test(ev.id)) continue
      await batch.put(b4a.from(ev.id, 'hex'), op.event)
      for (const key of indexKeys(ev)) await batch.put(b4a.from(key, 'utf8'), ev.id)
      continue
    }
    if (op.type === 'subscriptions' && typeof op.subscriptions === 'string') {
      try {
        const snap = JSON.parse(op.subscriptions)
        if (snap && typeof snap.connection === 'string' && /^([0-9a-f]{2})+$/.test(snap.connection)) {
          await batch.put(b4a.from(snap.connection, 'hex'), op.subscriptions)
        }
      } catch {}
    }
  }
  await batch.flush()
}

/**
 * A Nostr relay stored in an Autobase (corestore 6 / autobase 6.5.13) whose Hyperbee view has
 * the worker layout, so a mirrored copy reads the same as a real worker's.
 * Emits 'event' (ev) after an event has been applied to the view.
 */
export class RelayStore extends EventEmitter {
  constructor (store, { bootstrap = null, maxLimit = 1000 } = {}) {
    super()
    this.store = store
    this.maxLimit = maxLimit
    this.base = new Autobase(store, bootstrap, {
      valueEncoding: c.any,
      open: openView,
      apply: applyNodes
    })
    this.stats = { stored: 0, duplicates: 0, rejected: 0 }
  }

  async ready () {
    await this.base.ready()
    await this.base.update()
  }

  get key () {
    return b4a.toString(this.base.key, 'hex')
  }

  get view () {
    return this.base.view
  }

  async close () {
    await this.base.close()
  }

  info () {
    const core = this.base.view.core
    return {
      relayKey: this.key,
      writable: this.base.writable,
      localKey: b4a.toString(this.base.local.key, 'hex'),
      systemKey: this.base.system?.core?.key ? b4a.toString(this.base.system.core.key, 'hex') : null,
      viewKey: core?.key ? b4a.toString(core.key, 'hex') : null,
      viewLength: core ? core.length : 0,
      viewIndexedLength: core ? core.indexedLength : 0
    }
  }

  /** Hex keys of every writer core in the relay's system view, the local one included. */
  async writerKeys () {
    const keys = []
    for await (const { key } of this.base.system.list()) keys.push(b4a.toString(key, 'hex'))
    return keys
  }

  /**
   * Make this Autobase look for new blocks of every known writer. Autobase 6 learns of other
   * writers' data only through its wakeup extension and peer heads, which a blind peer does not
   * speak; without this hint a writer's appends made while we were offline (a leased gateway
   * write, a failover host) stay invisible when they reach us from the blind peer.
   */
  async hintWakeupAll () {
    const hints = []
    for (const key of await this.writerKeys()) hints.push({ key: b4a.from(key, 'hex'), length: -1 })
    if (hints.length) this.base.hintWakeup(hints)
    await this.base.update()
  }

  /** Append an addWriter op; returns once it is applied to this view. */
  async addWriter (keyHex, { indexer = true } = {}) {
    if (!/^[0-9a-f]{64}$/.test(keyHex)) throw new Error('writer key must be 64 hex')
    await this.base.append({ type: 'addWriter', key: keyHex, indexer })
    await this.base.update()
  }

  async isWriter (keyHex) {
    return (await this.writerKeys()).includes(keyHex)
  }

  async getEvent (id) {
    const node = await this.view.get(b4a.from(id, 'hex'))
    if (!node) return null
    try {
      return JSON.parse(node.value)
    } catch {
      return null
    }
  }

  /**
   * Store a verified event. Ephemeral kinds are not stored. Returns {stored, duplicate}.
   * Appends are serialised by Autobase itself; update() afterwards makes the event visible
   * to the next query from this process before the OK is sent.
   */
  async putEvent (ev) {
    if (isEphemeral(ev.kind)) {
      this.emit('event', ev)
      return { stored: false, duplicate: false, ephemeral: true }
    }
    if (await this.getEvent(ev.id)) {
      this.stats.duplicates++
      return { stored: false, duplicate: true }
    }
    await this.base.append({ type: 'event', event: JSON.stringify(ev) })
    await this.base.update()
    this.stats.stored++
    // A version older than the one held, or an event its author already deleted, is stored (it is
    // on the log) but never shown, live or later.
    const visible = !(await this.hidden(ev))
    this.emit('event', ev, { visible })
    return { stored: true, duplicate: false, visible }
  }

  /** Ids of the events under one index prefix, newest first, created_at within [since, until]. */
  async * _scan (prefix, since = 0, until = MAX_CREATED_AT) {
    const range = {
      gte: b4a.from(`${prefix}created_at:${padTs(since)}:`, 'utf8'),
      // '~' sorts after every hex digit, so the range includes created_at == until.
      lte: b4a.from(`${prefix}created_at:${padTs(until)}:id:~`, 'utf8'),
      reverse: true
    }
    for await (const { value } of this.view.createReadStream(range)) yield value
  }

  /**
   * The current version of a replaceable/addressable event (NIP-01: newest created_at, then the
   * lowest id), found through the author's index; `cache` (replaceKey → event) spans one query.
   */
  async _latestVersion (ev, cache) {
    const rk = replaceKey(ev)
    if (cache && cache.has(rk)) return cache.get(rk)
    let best = null
    for await (const id of this._scan(`pubkey:${ev.pubkey}:`)) {
      const other = id === ev.id ? ev : await this.getEvent(id)
      if (!other || replaceKey(other) !== rk) continue
      if (best && other.created_at < best.created_at) break
      if (!best || supersedes(other, best)) best = other
    }
    if (cache) cache.set(rk, best)
    return best
  }

  /**
   * Whether a relay shows this stored event no more (the rules of hypertuna/nostr/visibility.py):
   * a replaceable/addressable version superseded by a newer one, or an event deleted by its own
   * author with a kind-5 request naming it in an `e` tag, or naming its address in an `a` tag with
   * a created_at at or after its own. A deletion by anyone else does nothing, and deletion
   * requests themselves are never hidden.
   */
  async hidden (ev, cache = null) {
    if (ev.kind === DELETION_KIND) return false
    if (replaceKey(ev)) {
      const latest = await this._latestVersion(ev, cache)
      if (latest && latest.id !== ev.id) return true
    }
    for await (const id of this._scan(`tagKey:e:tagValue:${ev.id}:`)) {
      const del = await this.getEvent(id)
      if (del && del.kind === DELETION_KIND && del.pubkey === ev.pubkey &&
          del.tags.some((t) => t[0] === 'e' && t[1] === ev.id)) return true
    }
    const address = addressOf(ev)
    if (address) {
      for await (const id of this._scan(`tagKey:a:tagValue:${address}:`, ev.created_at)) {
        const del = await this.getEvent(id)
        if (del && del.kind === DELETION_KIND && del.pubkey === ev.pubkey &&
            del.tags.some((t) => t[0] === 'a' && t[1] === address)) return true
      }
    }
    return false
  }

  /** Index prefixes (newest-first iteration) that cover a filter. */
  _prefixes (f) {
    if (f.authors) return f.authors.map((a) => `pubkey:${a}:`)
    const tagKey = Object.keys(f).find((k) => /^#[a-zA-Z]$/.test(k))
    if (tagKey) return f[tagKey].map((v) => `tagKey:${tagKey[1]}:tagValue:${v}:`)
    return ['']
  }

  /**
   * Answer one NIP-01 filter: newest first, `since`/`until` inclusive, at most `limit` (capped at
   * maxLimit), and only what a relay still shows: no superseded replaceable/addressable version
   * (by id either) and nothing its author deleted (see hidden()).
   */
  async query (f, cache = new Map()) {
    const limit = Math.min(f.limit ?? this.maxLimit, this.maxLimit)
    if (limit === 0) return []
    const found = new Map()
    if (f.ids) {
      for (const id of f.ids) {
        if (!/^[0-9a-f]{64}$/.test(id)) continue
        const ev = await this.getEvent(id)
        if (ev && matchFilter(f, ev) && !(await this.hidden(ev, cache))) found.set(ev.id, ev)
      }
    } else {
      const until = Math.min(f.until ?? MAX_CREATED_AT, MAX_CREATED_AT)
      for (const prefix of this._prefixes(f)) {
        let taken = 0
        for await (const id of this._scan(prefix, f.since ?? 0, until)) {
          if (found.has(id)) continue
          const ev = await this.getEvent(id)
          if (!ev || !matchFilter(f, ev) || await this.hidden(ev, cache)) continue
          found.set(ev.id, ev)
          if (++taken >= limit) break
        }
      }
    }
    return [...found.values()].sort(compareNewestFirst).slice(0, limit)
  }

  /** Answer a REQ's filters; events matching several filters are sent once. */
  async queryFilters (filters) {
    const cache = new Map()
    return answerFilters(filters, (f) => this.query(f, cache))
  }
}
