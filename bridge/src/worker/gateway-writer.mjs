import fs from 'node:fs'
import path from 'node:path'
import os from 'node:os'
import Corestore from 'corestore'
import Autobase from 'autobase'
import crypto from 'hypercore-crypto'
import b4a from 'b4a'
import { writeFileAtomic, readJsonIfExists } from '../lib/files.mjs'
import { EscrowClient, EscrowHTTPError, MTLSTransport, loadSigningKey, wipe } from './escrow-client.mjs'

/** An escrow error as text without bodies or key material (the wire code, or the transport reason). */
function escrowErrorText (err) {
  if (err instanceof EscrowHTTPError) return `${err.status} ${err.code}`
  return err && err.message ? err.message : String(err)
}

/**
 * The dedicated gateway writer and its escrow life cycle (deposit, heartbeat, rotation): methods of
 * ReferenceWorker (copied onto it at the end of worker.mjs), kept apart because they share no state with relay
 * serving.
 */
export class WorkerGatewayWriter {
  /**
   * A dedicated gateway writer: a fresh Ed25519 key pair whose Autobase writer core is added as a
   * non-indexer, written to `file` (0600) as {relayKey, writerKey, publicKey, secretKey} (base64
   * secret). An existing file for this relay is reused. With the escrow on, the secret is kept in
   * memory for the deposit; otherwise it is wiped once written out.
   */
  async _ensureGatewayWriter (file) {
    const existing = readJsonIfExists(file)
    if (existing && existing.relayKey === this.relayKey && /^[0-9a-f]{64}$/.test(existing.writerKey || '')) {
      if (!(await this.relay.isWriter(existing.writerKey))) await this.relay.addWriter(existing.writerKey, { indexer: false })
      const writer = { writerKey: existing.writerKey, publicKey: existing.publicKey || null, secretKey: null }
      if (this.opts.escrow && typeof existing.secretKey === 'string') {
        const secretKey = Buffer.from(existing.secretKey, 'base64')
        if (secretKey.length === 64 && secretKey.subarray(32).toString('hex') === existing.publicKey) writer.secretKey = secretKey
        else wipe(secretKey)
      }
      if (!this.opts.escrow || writer.secretKey) return writer
      this.log.warn('gateway writer file has no usable secret; creating a new gateway writer')
    }
    return this._createGatewayWriter(file)
  }

  /**
   * Create and add a gateway writer. The writer core key is computed in a throwaway store from the
   * public key alone, so the secret key never enters this worker's own storage. Written to `file`
   * when given; the secret stays in memory only when the escrow needs it.
   */
  async _createGatewayWriter (file = null) {
    const keyPair = crypto.keyPair()
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ht-writer-key-'))
    let writerKey
    try {
      const tmpStore = new Corestore(tmp)
      const core = Autobase.getLocalCore(tmpStore, { keyPair: { publicKey: keyPair.publicKey, secretKey: null } })
      await core.ready()
      writerKey = b4a.toString(core.key, 'hex')
      await core.close()
      await tmpStore.close()
    } finally {
      fs.rmSync(tmp, { recursive: true, force: true })
    }
    await this.relay.addWriter(writerKey, { indexer: false })
    const publicKey = b4a.toString(keyPair.publicKey, 'hex')
    if (file) {
      const out = { relayKey: this.relayKey, writerKey, publicKey, secretKey: b4a.toString(keyPair.secretKey, 'base64'), createdAt: Date.now() }
      writeFileAtomic(file, JSON.stringify(out) + '\n', 0o600)
    }
    if (this.opts.escrow) return { writerKey, publicKey, secretKey: keyPair.secretKey }
    keyPair.secretKey.fill(0)
    return { writerKey, publicKey, secretKey: null }
  }

  _openEscrowClient () {
    const e = this.opts.escrow
    const signingFile = e.signingKeyFile || path.join(this.storageDir, 'escrow-signing-key')
    this.escrowClient = new EscrowClient({
      transport: e.transport || new MTLSTransport(e.url, { ca: e.ca, cert: e.cert, key: e.key, timeoutMs: e.timeoutMs || 10_000 }),
      signing: loadSigningKey(signingFile, { create: true }),
      pinnedVerifyKey: e.verifyKey ? b4a.from(e.verifyKey, 'hex') : null
    })
    this.escrowState = { state: 'pending', workerKey: this.escrowClient.workerKey }
  }

  /** Escrow calls run one at a time, so issuedAt values reach the escrow in the order they were made. */
  _escrowEnqueue (task) {
    const run = this._escrowQueue.then(() => (this.closing ? null : task()))
    this._escrowQueue = run.catch((err) => this.log.warn('escrow task failed', { error: escrowErrorText(err) }))
    return run
  }

  _escrowSleep (ms) {
    return new Promise((resolve) => {
      this._escrowWake = resolve
      this._escrowTimer = setTimeout(resolve, ms)
      this._escrowTimer.unref()
    })
  }

  /**
   * Deposit the current gateway writer, retrying until the escrow accepts it. A writer key that
   * was released under a lease must rotate: a fresh gateway writer is added and deposited instead.
   */
  async _escrowDepositUntilAccepted () {
    let delay = 1000
    for (;;) {
      if (this.closing) return null
      try {
        const writer = this.gatewayWriter
        const res = await this.escrowClient.deposit(this.relayKey, writer.secretKey, {
          ownerIdentity: this.swarmPublicKey,
          ttlSeconds: this.opts.escrow.depositTtlSeconds || 86400
        })
        if (this.closing) return null
        this.escrowState = {
          state: 'deposited',
          workerKey: this.escrowClient.workerKey,
          depositId: res.depositId,
          writerPublicKey: res.writerPublicKey,
          writerKey: writer.writerKey,
          policyVersion: res.policyVersion,
          escrowKeyId: res.escrowKeyId,
          expiresAt: res.expiresAt,
          depositedAt: Date.now()
        }
        this.log.info('escrow deposit accepted', { depositId: res.depositId, writerPublicKey: res.writerPublicKey, replayed: !!res.replayed })
        this.emit('escrow', { ...this.escrowState, relayKey: this.relayKey })
        this.writeStatus()
        this._scheduleHeartbeat()
        return res
      } catch (err) {
        if (this.closing) return null
        if (err instanceof EscrowHTTPError && err.code === 'writer-key-must-rotate') {
          await this._rotateGatewayWriter()
          continue
        }
        if (err instanceof EscrowHTTPError && (err.code === 'escrow-key-changed' || err.code === 'policy-version-mismatch')) {
          await this.escrowClient.policy({ refresh: true }).catch(() => {})
        }
        this.escrowState = { ...this.escrowState, state: 'deposit-failed', error: escrowErrorText(err), at: Date.now() }
        this.log.warn('escrow deposit failed; retrying', { error: escrowErrorText(err), retryInMs: delay })
        await this._escrowSleep(delay)
        delay = Math.min(delay * 2, 60_000)
      }
    }
  }

  /** Replace the gateway writer with a fresh one (added to the Autobase); the old secret is wiped. */
  async _rotateGatewayWriter () {
    const old = this.gatewayWriter
    this.gatewayWriter = await this._createGatewayWriter(this.opts.gatewayWriterOut || null)
    if (old && old.secretKey) wipe(old.secretKey)
    this.log.info('gateway writer rotated', { writerKey: this.gatewayWriter.writerKey })
    this.writeStatus()
  }

  _scheduleHeartbeat () {
    clearTimeout(this._escrowTimer)
    const ms = this.opts.escrow.heartbeatMs || 30_000
    if (this.closing) return
    this._escrowTimer = setTimeout(() => {
      this._escrowEnqueue(() => this._escrowHeartbeat()).finally(() => {
        if (this.escrowState && this.escrowState.state === 'deposited') this._scheduleHeartbeat()
      })
    }, ms)
    this._escrowTimer.unref()
  }

  /**
   * One heartbeat. If the gateway held a lease meanwhile, the escrow asks for rotation: a new
   * gateway writer is deposited. A deposit past half its lifetime is renewed, and one the escrow no
   * longer knows (`unknown-relay`) is made again.
   */
  async _escrowHeartbeat () {
    try {
      const res = await this.escrowClient.heartbeat(this.relayKey)
      if (this.closing) return
      this.escrowState = { ...this.escrowState, lastHeartbeatAt: Date.now(), error: undefined }
      if (res.rotationRequired) {
        this.log.info('escrow asks for a new gateway writer', { leaseRevoked: res.leaseRevoked || null })
        await this._rotateGatewayWriter()
        await this._escrowDepositUntilAccepted()
        return
      }
      const s = this.escrowState
      if (s.expiresAt && s.depositedAt && Date.now() / 1000 > (s.depositedAt / 1000 + s.expiresAt) / 2) {
        await this._escrowDepositUntilAccepted()
      }
    } catch (err) {
      if (this.closing) return
      this.escrowState = { ...this.escrowState, error: escrowErrorText(err), errorAt: Date.now() }
      this.log.warn('escrow heartbeat failed', { error: escrowErrorText(err) })
      if (err instanceof EscrowHTTPError && err.code === 'unknown-relay') await this._escrowDepositUntilAccepted()
    }
  }
}
