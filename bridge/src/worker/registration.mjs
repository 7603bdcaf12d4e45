import { JSONH } from './http.mjs'
import { collectRelayCores } from './relay-cores.mjs'

/**
 * Registration with the gateway: the signed HTTP registration (repeated, retried after failures), the
 * swarm registration on every identified gateway connection, and client tokens (ReferenceWorker methods).
 */
export class WorkerRegistration {
  registrationMetadata () {
    return {
      identifier: this.identifier,
      publicIdentifier: this.identifier,
      name: this.opts.name,
      description: this.opts.description ?? `Reference relay ${this.opts.name}`,
      gatewayPath: this.gatewayPath,
      pathAliases: [this.identifier],
      requiresAuth: !!this.opts.requiresAuth,
      isPublic: true,
      ownerPeerKey: this.swarmPublicKey,
      ownerPubkey: this.ownerHex,
      driveKey: this.drive.key,
      ...(this.blindPeeringPublicKey ? { blindPeeringPublicKey: this.blindPeeringPublicKey } : {})
    }
  }

  /** `relayCores` for the registration (see relay-cores.mjs); writer cores other than ours follow role-less. */
  async relayCores () {
    const local = this.relay.info().localKey
    const others = (await this.relay.writerKeys()).filter((k) => k !== local)
    return collectRelayCores(this.relay.base, others)
  }

  async registerHttp () {
    if (!this.registrar) return null
    const extra = {}
    if (this.opts.relayCores) {
      extra.relayCores = await this.relayCores()
      extra.relayCoresMode = 'merge'
    }
    const res = await this.registrar.register({
      relayKey: this.relayKey,
      peers: [this.swarmPublicKey],
      metadata: this.registrationMetadata(),
      extra
    })
    if (!res.ok) this.log.warn('gateway registration failed', { status: res.status, error: res.error })
    this.emit('registered', res)
    if (!this.closing) this.writeStatus()
    return res
  }

  /**
   * Re-register every registerIntervalMs; after a failure retry sooner (1 s doubling up to the
   * interval), so a worker started before the gateway is registered soon after it comes up.
   */
  _scheduleRegistration (ok) {
    if (this.closing || !this.registrar) return
    this._regFailures = ok ? 0 : (this._regFailures || 0) + 1
    const interval = this.opts.registerIntervalMs
    const delay = ok ? interval : Math.min(interval || 60_000, 1000 * 2 ** Math.min(this._regFailures - 1, 6))
    if (!delay) return
    clearTimeout(this._regTimer)
    this._regTimer = setTimeout(async () => {
      const res = await this.registerHttp()
      this._scheduleRegistration(res.ok)
    }, delay)
    this._regTimer.unref()
  }

  /** Resolves once an HTTP registration has succeeded (at once if one already has). */
  waitRegistered () {
    if (this.registrar && this.registrar.last && this.registrar.last.ok) return Promise.resolve(this.registrar.last)
    return new Promise((resolve) => {
      const on = (res) => {
        if (!res.ok) return
        this.removeListener('registered', on)
        resolve(res)
      }
      this.on('registered', on)
    })
  }

  async _registerSwarmAll () {
    for (const gw of this.gateways.values()) await this._registerOverSwarm(gw).catch(() => {})
  }

  async _registerOverSwarm (gw) {
    // Real workers name their blind-peering key at the top and on every relay, each time both as a
    // field and inside `metadata`.
    const bpk = this.blindPeeringPublicKey
    const announce = bpk ? { blindPeeringPublicKey: bpk, metadata: { blindPeeringPublicKey: bpk } } : {}
    const body = {
      publicKey: this.swarmPublicKey,
      relays: [{
        identifier: this.identifier,
        relayKey: this.relayKey,
        name: this.opts.name,
        description: this.opts.description ?? `Reference relay ${this.opts.name}`,
        isPublic: true,
        gatewayPath: this.gatewayPath,
        metadataUpdatedAt: this.startedAt,
        ...announce
      }],
      address: null,
      mode: 'hyperswarm',
      timestamp: new Date().toISOString(),
      nostrPubkeyHex: this.ownerHex,
      pfpDriveKey: null,
      driveKey: this.drive.key,
      ...announce
    }
    try {
      const res = await gw.channel.request({ method: 'POST', path: '/gateway/register', headers: JSONH, body })
      let json = null
      try { json = JSON.parse(res.body.toString('utf8')) } catch {}
      this.lastSwarmRegistration = { at: Date.now(), gateway: gw.peerKey, statusCode: res.statusCode, body: json }
    } catch (err) {
      this.lastSwarmRegistration = { at: Date.now(), gateway: gw.peerKey, statusCode: null, error: err.message }
    }
    this.emit('swarm-registered', this.lastSwarmRegistration)
    if (!this.closing) this.writeStatus()
    return this.lastSwarmRegistration
  }

  /** Issue a gateway client token for `pubkey` (default: the relay owner). */
  async issueClientToken ({ pubkey, ttlSeconds } = {}) {
    if (!this.registrar) throw new Error('gateway URL and secret are required to issue tokens')
    const who = pubkey ?? this.ownerHex
    const relayAuthToken = this.addAuthToken(who)
    const issued = await this.registrar.issueToken({ relayKey: this.relayKey, relayAuthToken, pubkey: who, ttlSeconds })
    return { ...issued, relayKey: this.relayKey, gatewayPath: this.gatewayPath, pubkey: who }
  }
}
