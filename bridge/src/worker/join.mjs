import { errorMessage } from '../lib/log.mjs'
import { JSONH } from './http.mjs'

/** Failover hosting: joining another host's relay, and accepting hosts that join ours (ReferenceWorker methods). */
export class WorkerJoin {
  /**
   * Joining host: once the channel to the hosting worker is open, ask it to add our writer core,
   * then wait until the replicated system view lists us and the Autobase is writable.
   */
  async _requestJoin (ch) {
    if (this.joinState && (this.joinState.state === 'writable' || this.joinState.state === 'requesting')) return
    const writerKey = this.relay.info().localKey
    this.joinState = { state: 'requesting', writerKey, peer: this.opts.joinPeer, at: Date.now() }
    try {
      if (!this.relay.base.writable) {
        const res = await ch.request({ method: 'POST', path: '/relay/join', headers: JSONH, body: { relayKey: this.relayKey, writerKey } })
        if (res.statusCode !== 200) throw new Error(`join refused with ${res.statusCode}: ${res.body.toString('utf8').slice(0, 200)}`)
      }
      const deadline = Date.now() + 60_000
      while (!this.relay.base.writable) {
        if (this.closing) return
        if (Date.now() > deadline) throw new Error('not writable 60 s after the join was accepted')
        await this.relay.base.update()
        await new Promise((resolve) => setTimeout(resolve, 200))
      }
      this.joinState = { state: 'writable', writerKey, peer: this.opts.joinPeer, at: Date.now() }
      this.emit('joined', this.joinState)
      if (!this.closing) this.writeStatus()
    } catch (err) {
      this.joinState = { state: 'failed', writerKey, peer: this.opts.joinPeer, error: errorMessage(err), at: Date.now() }
      this.log.warn('join failed', { error: errorMessage(err) })
    }
  }

  async _relayJoin (req) {
    if (!this.opts.allowJoin) return { statusCode: 403, headers: JSONH, body: { error: 'join-not-allowed' } }
    let body
    try {
      body = JSON.parse(req.body.toString('utf8'))
    } catch {
      return { statusCode: 400, headers: JSONH, body: { error: 'invalid-json' } }
    }
    if (!body || body.relayKey !== this.relayKey) return { statusCode: 404, headers: JSONH, body: { error: 'relay-not-found' } }
    if (typeof body.writerKey !== 'string' || !/^[0-9a-f]{64}$/.test(body.writerKey)) {
      return { statusCode: 400, headers: JSONH, body: { error: 'writerKey must be 64 hex' } }
    }
    if (!this.relay.base.writable) return { statusCode: 503, headers: JSONH, body: { error: 'not-writable' } }
    if (!(await this.relay.isWriter(body.writerKey))) await this.relay.addWriter(body.writerKey, { indexer: false })
    this.log.info('writer added on join request', { peerKey: req.peerKey })
    if (this.mirror) this.mirror.onRelayChanged()
    return { statusCode: 200, headers: JSONH, body: { status: 'added', relayKey: this.relayKey, writerKey: body.writerKey } }
  }
}
