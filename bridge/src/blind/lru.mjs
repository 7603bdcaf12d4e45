/**
 * Bounded cache of open resources, evicting the least recently *accessed* entry (a Map keeps
 * insertion order, so every hit re-inserts its key at the end). Evicted values are handed to
 * `onevict`, which closes them; a close failure is counted, never thrown into the caller that
 * happened to trigger the eviction.
 */
export class LruCache {
  constructor ({ max, onevict }) {
    if (!Number.isInteger(max) || max < 1) throw new Error('LruCache max must be a positive integer')
    this.max = max
    this.onevict = onevict
    this.map = new Map()
    this.stats = { hits: 0, misses: 0, evictions: 0, closeErrors: 0 }
  }

  get size () {
    return this.map.size
  }

  get (key) {
    const v = this.map.get(key)
    if (v === undefined) {
      this.stats.misses++
      return undefined
    }
    this.stats.hits++
    this.map.delete(key)
    this.map.set(key, v)
    return v
  }

  peek (key) {
    return this.map.get(key)
  }

  set (key, value) {
    if (this.map.has(key)) this.map.delete(key)
    this.map.set(key, value)
    while (this.map.size > this.max) {
      const [oldKey, oldValue] = this.map.entries().next().value
      this.map.delete(oldKey)
      this.stats.evictions++
      this._close(oldKey, oldValue)
    }
  }

  /** Remove and close one entry (e.g. before its core is deleted). */
  delete (key) {
    const v = this.map.get(key)
    if (v === undefined) return Promise.resolve(false)
    this.map.delete(key)
    return this._close(key, v).then(() => true)
  }

  async clear () {
    const entries = [...this.map.entries()]
    this.map.clear()
    await Promise.all(entries.map(([k, v]) => this._close(k, v)))
  }

  keys () {
    return [...this.map.keys()]
  }

  _close (key, value) {
    return Promise.resolve()
      .then(() => this.onevict(value, key))
      .catch(() => { this.stats.closeErrors++ })
  }

  info () {
    return { size: this.map.size, max: this.max, ...this.stats }
  }
}
