import { EventEmitter } from 'node:events'
import { randomBytes } from 'node:crypto'
import { DELETION_KIND, addressOf, answerFilters, compareNewestFirst, isEphemeral, matchFilter, replaceKey, supersedes } from './nostr.mjs'

/**
 * A relay kept in memory, for benchmarks (`--memory-store`): the same reads and writes as RelayStore
 * (NIP-01 filters, newest first, superseded replaceable versions and deleted events hidden, the 'event'
 * emission after a write) without the Autobase append and update that each write costs there, so a
 * worker answers EVENT at once and a benchmark measures the gateway, not the worker's storage.
 * Nothing survives a restart; there is no log, no writer and nothing to replicate or mirror.
 */
export class MemoryRelayStore extends EventEmitter {
  constructor ({ key = null, maxLimit = 1000 } = {}) {
    super()
    this.relayKey = key || randomBytes(32).toString('hex')
    this.maxLimit = maxLimit
    this.events = new Map() // id → event
    this.byAuthor = new Map() // pubkey → events
    this.latest = new Map() // replaceKey → newest version
    this.deletions = new Map() // deleted event id or `a` address → kind-5 events naming it
    this.stats = { stored: 0, duplicates: 0, rejected: 0 }
  }

  async ready () {}

  async close () {}

  get key () {
    return this.relayKey
  }

  /** Null where RelayStore has an Autobase, so anything that needs one fails plainly. */
  get base () {
    return null
  }

  info () {
    return {
      relayKey: this.relayKey,
      writable: true,
      localKey: null,
      systemKey: null,
      viewKey: null,
      viewLength: this.events.size,
      viewIndexedLength: this.events.size,
      memory: true
    }
  }

  async writerKeys () {
    return []
  }

  async isWriter () {
    return false
  }

  async hintWakeupAll () {}

  async addWriter () {
    throw new Error('a memory-store relay has no writers to add')
  }

  async getEvent (id) {
    return this.events.get(id) ?? null
  }

  /** Store an event as RelayStore.putEvent does (same result and 'event' emission), in memory. */
  async putEvent (ev) {
    if (isEphemeral(ev.kind)) {
      this.emit('event', ev)
      return { stored: false, duplicate: false, ephemeral: true }
    }
    if (this.events.has(ev.id)) {
      this.stats.duplicates++
      return { stored: false, duplicate: true }
    }
    this._index(ev)
    this.stats.stored++
    const visible = !this._hidden(ev)
    this.emit('event', ev, { visible })
    return { stored: true, duplicate: false, visible }
  }

  _index (ev) {
    this.events.set(ev.id, ev)
    const own = this.byAuthor.get(ev.pubkey)
    if (own) own.push(ev)
    else this.byAuthor.set(ev.pubkey, [ev])
    const rk = replaceKey(ev)
    if (rk) {
      const held = this.latest.get(rk)
      if (!held || supersedes(ev, held)) this.latest.set(rk, ev)
    }
    if (ev.kind === DELETION_KIND) {
      for (const t of ev.tags) {
        if ((t[0] === 'e' || t[0] === 'a') && t.length > 1) {
          const list = this.deletions.get(t[1])
          if (list) list.push(ev)
          else this.deletions.set(t[1], [ev])
        }
      }
    }
  }

  /**
   * Whether a relay shows this stored event no more, by the rules of RelayStore.hidden: a superseded
   * replaceable/addressable version, or an event its own author deleted by id, or by address with a
   * deletion at or after its created_at. Deletion requests themselves are never hidden.
   */
  _hidden (ev) {
    if (ev.kind === DELETION_KIND) return false
    const rk = replaceKey(ev)
    if (rk && this.latest.get(rk).id !== ev.id) return true
    const byAuthor = (del) => del.pubkey === ev.pubkey
    if ((this.deletions.get(ev.id) || []).some((del) => byAuthor(del) && del.tags.some((t) => t[0] === 'e' && t[1] === ev.id))) {
      return true
    }
    const address = addressOf(ev)
    if (!address) return false
    return (this.deletions.get(address) || []).some((del) =>
      byAuthor(del) && del.created_at >= ev.created_at && del.tags.some((t) => t[0] === 'a' && t[1] === address))
  }

  async hidden (ev) {
    return this._hidden(ev)
  }

  /** The stored events a filter can match: by id, by author, or all of them. */
  _candidates (f) {
    if (f.ids) return f.ids.map((id) => this.events.get(id)).filter(Boolean)
    if (f.authors) return f.authors.flatMap((a) => this.byAuthor.get(a) || [])
    return this.events.values()
  }

  /** Answer one NIP-01 filter as RelayStore.query does: newest first, at most `limit` (capped at maxLimit). */
  async query (f) {
    const limit = Math.min(f.limit ?? this.maxLimit, this.maxLimit)
    if (limit === 0) return []
    const found = new Map()
    for (const ev of this._candidates(f)) {
      if (!found.has(ev.id) && matchFilter(f, ev) && !this._hidden(ev)) found.set(ev.id, ev)
    }
    return [...found.values()].sort(compareNewestFirst).slice(0, limit)
  }

  /** Answer a REQ's filters; events matching several filters are sent once. */
  async queryFilters (filters) {
    return answerFilters(filters, (f) => this.query(f))
  }
}
