const hex = (buf) => Buffer.from(buf).toString('hex')

/**
 * The blind peer's byte budget (`maxBytes`), in place of blind-peer's own `_gc`.
 *
 * blind-peer 3.8.1 clears whole cores, lowest priority then least recently active first, until it is
 * under budget: past the priority-0 cores it clears priority-1 ones, which are a relay's Autobase view,
 * system and writer cores, and it tells no one (its `gc-done` event carries a byte count only). A
 * relay's replica then stops at whatever it had materialized, and the gateway is never told why.
 *
 * Here the budget:
 * - clears only priority-0 cores (hyperdrive metadata and blobs, other low-priority cores), least
 *   recently active first, never an announced core and never a core the replica reader resolved as a
 *   relay's view;
 * - never clears a core of priority >= 1: the gateway reads relay views from them (replicas), and its
 *   leased writers need the relay's writer and system cores. When priority-0 cores alone cannot bring
 *   the store under budget, `state()` says so (`overBudget`) and one warning is logged until it is
 *   under budget again;
 * - reports every core it cleared as `mirror.removed` with reason `gc-bytes`. blind-peer keeps a cleared
 *   core's record and fetches only blocks past the cleared length, so the history stays gone while the
 *   record exists: a later add of the same core by its worker is followed by the same removal again.
 *   `blindPeer.deleteCore` drops the record, after which the worker's next add mirrors it from block 0.
 *
 * `run()` is called by blind-peer's `flush()`, under its lock, whenever the store holds `maxBytes` or
 * more; the candidates are scanned in blind-peer's own GC order (its `cores-by-activity` index, sorted
 * by priority), so a run stops at the first protected core.
 */
export class ByteBudget {
  constructor (service) {
    this.service = service
    this.cleared = new Map() // core key (hex) -> { blocksCleared, bytesCleared, at }
    this.overBudget = false
    this.lastRun = null
  }

  /** Cores cleared before a restart (blind-peer keeps `blocksCleared` in their records). */
  noteRecords (records) {
    for (const r of records) {
      if (r.blocksCleared > 0) this.cleared.set(hex(r.key), { blocksCleared: r.blocksCleared, bytesCleared: r.bytesCleared || 0, at: r.updated || 0 })
    }
  }

  /** The record is gone (deleteCore): the next add mirrors the core from block 0. */
  forget (coreKey) {
    this.cleared.delete(coreKey)
    this.overBudget = this.overBudget && this.service.bp.needsGc()
  }

  /** An add of a core whose history the budget cleared: it is still gone, say so again. */
  reannounce (coreKey) {
    const entry = this.cleared.get(coreKey)
    if (entry) this._emit(coreKey, entry)
  }

  async run () {
    const { bp, reader, log } = this.service
    if (!bp.needsGc()) return
    const bytesToClear = bp.digest.bytesAllocated - bp.maxBytes
    const views = new Set(reader.viewByRelay.values())
    const done = []
    let bytesCleared = 0
    bp.emit('gc-start', { bytesToClear })
    for await (const record of bp.db.createGcCandidateReadStream()) {
      if (bp.closing) return
      if (bytesCleared >= bytesToClear || (record.priority || 0) > 0) break
      const id = hex(record.key)
      if (!record.bytesAllocated || record.announce || views.has(id)) continue
      const core = bp.store.get({ key: record.key })
      await core.ready()
      if (bp.closing) return
      try {
        const tracker = bp.activeReplication.get(hex(core.discoveryKey))
        if (!tracker) continue
        if (!tracker.record) await tracker.refresh()
        if (!tracker.record) continue
        const bytes = tracker.gc()
        bytesCleared += bytes
        done.push([id, { blocksCleared: tracker.record.blocksCleared, bytesCleared: bytes, at: Date.now() }])
      } finally {
        await core.close().catch(() => {})
      }
    }
    await bp.db.flush()
    if (bp.closing) return
    bp.stats.bytesGcd += bytesCleared
    bp.emit('gc-done', { bytesCleared })
    for (const [id, entry] of done) {
      this.cleared.set(id, entry)
      await reader.forgetCore(id)
      this._emit(id, entry)
    }
    const over = bp.digest.bytesAllocated >= bp.maxBytes
    if (over && !this.overBudget) {
      log.warn('blind-peer byte budget exceeded by cores it does not clear (priority >= 1, announced or relay views)', { bytesAllocated: bp.digest.bytesAllocated, maxBytes: bp.maxBytes })
    }
    this.overBudget = over
    if (done.length) this.lastRun = { at: Date.now(), cores: done.length, bytesCleared }
  }

  _emit (coreKey, { blocksCleared, bytesCleared }) {
    this.service.progress.delete(coreKey)
    this.service.emit('mirror.removed', { coreKey, reason: 'gc-bytes', blocksCleared, bytesCleared })
  }

  state () {
    const digest = this.service.bp.digest || {}
    return {
      maxBytes: this.service.maxBytes,
      bytesAllocated: digest.bytesAllocated || 0,
      overBudget: this.overBudget,
      clearedCores: this.cleared.size,
      lastRun: this.lastRun
    }
  }
}
