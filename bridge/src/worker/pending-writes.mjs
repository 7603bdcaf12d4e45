import { pipeline } from 'node:stream/promises'
import Hyperdrive from 'hyperdrive'
import b4a from 'b4a'
import { JSONH } from './http.mjs'
import { errorMessage } from '../lib/log.mjs'

const HEX64 = /^[0-9a-f]{64}$/
const ARTIFACT_FOLDERS = ['join', 'callback']
const FETCH_WAIT_MS = 30_000

/**
 * The worker's side of the gateway's pending-write push (ReferenceWorker methods): `POST
 * /gateway/pending-writes` from an identified gateway is acknowledged at once; a `pending` push then
 * replicates the gateway's drive (its key is in the push) from the gateway's blind peer, copies the relay's
 * files into this worker's own drive folder and the join/callback artifacts under `/gateway-artifacts/`,
 * and reports `resync-complete` (signed) so the gateway clears its pending writes and lets its lease go.
 * One sync runs at a time; a push older than the last one seen is a no-op.
 */
export class WorkerPendingWrites {
  async _pendingWrites (req) {
    if (!this.gateways.has(req.peerKey)) return { statusCode: 403, headers: JSONH, body: { error: 'forbidden' } }
    let push
    try {
      push = JSON.parse(req.body.toString('utf8'))
    } catch {
      return { statusCode: 400, headers: JSONH, body: { error: 'invalid-json' } }
    }
    if (!push || typeof push.relayKey !== 'string') return { statusCode: 400, headers: JSONH, body: { error: 'relayKey-required' } }
    if (push.relayKey !== this.relayKey) return { statusCode: 404, headers: JSONH, body: { error: 'relay-not-found' } }
    const last = this.pendingWrites
    if (last && Number(push.updatedAt) <= Number(last.updatedAt)) return { statusCode: 200, headers: JSONH, body: { status: 'noop' } }
    this.pendingWrites = {
      state: push.state === 'cleared' ? 'cleared' : 'queued',
      types: Array.isArray(push.types) ? push.types : [],
      driveKey: typeof push.driveKey === 'string' && HEX64.test(push.driveKey) ? push.driveKey : null,
      updatedAt: Number(push.updatedAt) || Date.now(),
      receivedAt: Date.now(),
      copied: last ? last.copied : []
    }
    if (push.state !== 'cleared') {
      const job = this.pendingWrites
      this._pendingJob = (this._pendingJob || Promise.resolve()).then(() => this._catchUp(job))
    }
    this.writeStatus()
    return { statusCode: 200, headers: JSONH, body: { status: 'accepted' } }
  }

  async _catchUp (job) {
    if (this.closing) return
    job.state = 'in-progress'
    try {
      if (job.driveKey && job.types.some((t) => t === 'drive' || t.startsWith('http-'))) await this._copyGatewayDrive(job)
      const res = await this.registrar.resyncComplete(this.relayKey)
      job.state = res.ok ? 'completed' : 'error'
      job.error = res.ok ? null : `resync-complete answered ${res.status}`
      if (res.ok) process.stdout.write('HYPERTUNA_WORKER_RESYNC ' + JSON.stringify({ relayKey: this.relayKey, copied: job.copied }) + '\n')
    } catch (err) {
      job.state = 'error'
      job.error = errorMessage(err)
      this.log.warn('catching up with the gateway failed', { error: job.error })
    }
    if (!this.closing) this.writeStatus()
  }

  /** Replicate the gateway drive through the blind peer (within this relay's trust scope) and copy it. */
  async _copyGatewayDrive (job) {
    if (!this.mirror) throw new Error('no blind peer to replicate the gateway drive from')
    const remote = new Hyperdrive(this.store, b4a.from(job.driveKey, 'hex'))
    try {
      await remote.ready()
      const referrer = b4a.from(this.relayKey, 'hex')
      await this.mirror.client.addCore(remote.core, remote.core.key, { announce: false, referrer, priority: 0 })
      await withTimeout(remote.core.update({ wait: true }), 'the gateway drive did not arrive')
      const blobs = await withTimeout(remote.getBlobs(), 'the gateway drive has no blobs')
      await this.mirror.client.addCore(blobs.core, blobs.core.key, { announce: false, referrer, priority: 0 })
      const copied = new Set(job.copied)
      for await (const entry of remote.list('/', { recursive: true })) {
        const dest = this._localPath(entry.key)
        if (!dest || !entry.value.blob || (await this.drive.drive.entry(dest))) continue
        await pipeline(remote.createReadStream(entry.key), this.drive.drive.createWriteStream(dest, { metadata: entry.value.metadata }))
        copied.add(dest)
      }
      job.copied = [...copied]
    } finally {
      await remote.close().catch(() => {})
    }
  }

  /** Where a gateway-drive path lands in this worker's drive (workers' folder conventions); null to skip. */
  _localPath (key) {
    const [folder, name, ...rest] = key.split('/').filter(Boolean)
    if (!name || rest.length) return null
    if (folder === this.relayKey || folder === this.identifier) return `/${this.identifier}/${name}`
    if (ARTIFACT_FOLDERS.includes(folder)) return `/gateway-artifacts/${folder}/${name}`
    return null
  }
}

function withTimeout (promise, message) {
  let timer
  return Promise.race([
    promise,
    new Promise((resolve, reject) => { timer = setTimeout(() => reject(new Error(message)), FETCH_WAIT_MS) })
  ]).finally(() => clearTimeout(timer))
}
