import path from 'node:path'
import { createHash, randomBytes } from 'node:crypto'
import Corestore from 'corestore'
import Hyperdrive from 'hyperdrive'
import BlindPeering from 'blind-peering'
import HyperDHT from 'hyperdht'
import b4a from 'b4a'
import { createSwarm } from '../swarm/bootstrap.mjs'
import { createLogger, errorMessage } from '../lib/log.mjs'
import { describeEntry, parseRange, streamEntry } from '../blind/drive-reader.mjs'

export class GatewayDriveError extends Error {
  constructor (code, message) {
    super(message)
    this.code = code
  }
}

const HEX64 = /^[0-9a-f]{64}$/
const RELAY_KEY = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$/
/** One path segment: what workers use in folder and file names, never `.`/`..` or empty. */
const SEGMENT = /^(?!\.{1,2}$)[A-Za-z0-9._:-]{1,200}$/
const MAX_OPEN_UPLOADS = 64
const UPLOAD_IDLE_MS = 120_000
const MIRROR_WAIT_MS = 15_000

/**
 * A drive path from segments Python already checked; checked again here, because a path is what decides
 * where bytes land: no empty, `.` or `..` segment, nothing outside the workers' file-name alphabet.
 */
export function drivePath (segments) {
  if (!Array.isArray(segments) || segments.length === 0 || segments.length > 4) {
    throw new GatewayDriveError('invalid-path', 'a drive path is 1 to 4 segments')
  }
  for (const s of segments) {
    if (typeof s !== 'string' || !SEGMENT.test(s)) throw new GatewayDriveError('invalid-path', 'a path segment may hold only [A-Za-z0-9._:-], and not be . or ..')
  }
  return '/' + segments.join('/')
}

/** `relay` drives are per relay key; the one `pfp` drive holds every avatar. */
function driveName ({ kind, relayKey }) {
  if (kind === 'pfp') return 'pfp'
  if (kind !== 'relay') throw new GatewayDriveError('invalid-params', 'kind must be relay or pfp')
  if (typeof relayKey !== 'string' || !RELAY_KEY.test(relayKey)) throw new GatewayDriveError('invalid-params', 'relayKey must be a relay key (hex or npub…:name)')
  return `relay:${relayKey}`
}

/**
 * Gateway-owned Hyperdrives (corestore 6 / hyperdrive 11, this package's main tree), on disk under
 * `<storage>/gateway-drives`: one per relay (namespace `gw-relay:<relayKey>`) and one pfp drive
 * (`gw-pfp`). They hold what clients upload while a relay's workers are offline, under the lease
 * Python checked. Each drive's metadata and blobs cores are mirrored to the gateway's own blind peer with
 * announce on (a blind-peering client on a swarm of its own, trusted by the blind peer), so a returning
 * worker can replicate them from there and they outlive this process's store.
 *
 * Uploads arrive as chunks (`uploadBegin` / `uploadChunk` / `uploadCommit`): each chunk call resolves only
 * once the drive's write stream took it, which is the back-pressure Python waits on, so neither side holds
 * a whole file. The entry is written by the commit alone: an aborted, oversized, mismatching or
 * interrupted upload leaves no entry behind. One upload per drive path at a time.
 */
export class GatewayDrives {
  constructor ({ storageDir, bootstrap, host, seed, blind = null, logger }) {
    this.dir = path.join(storageDir, 'gateway-drives')
    this.bootstrap = bootstrap
    this.host = host
    this.seed = seed
    this.blind = blind
    this.log = logger || createLogger('gateway-drives')
    this.store = null
    this.swarm = null
    this.client = null
    this.drives = new Map() // name -> Promise<{drive, mirrored}>
    this.uploads = new Map() // uploadId -> upload
    this.busyPaths = new Set() // `${name}${path}` being uploaded
  }

  async start () {
    this.store = new Corestore(this.dir)
    await this.store.ready()
    if (!this.blind) return
    const keyPair = HyperDHT.keyPair(createHash('sha256').update('hypertuna-gateway-drives\0').update(this.seed).digest())
    this.swarm = createSwarm({ bootstrap: this.bootstrap, host: this.host, keyPair })
    await this.swarm.dht.ready()
    // The gateway's own key: allowed to add cores (the gate) and to announce them (blind-peer's own
    // trusted set), which is what lets a returning worker find the drives by discovery key.
    this.blind.trustInternal(keyPair.publicKey)
    this.blind.bp.addTrustedPubKey(keyPair.publicKey)
    this.client = new BlindPeering(this.swarm, this.store, { mirrors: [b4a.from(this.blind.publicKey, 'hex')], pick: 1 })
  }

  async stop () {
    for (const up of this.uploads.values()) this._discard(up, 'shutdown')
    if (this.client) await this.client.close().catch(() => {})
    for (const p of this.drives.values()) {
      const d = await p.catch(() => null)
      if (d) await d.drive.close().catch(() => {})
    }
    this.drives.clear()
    if (this.store) await this.store.close().catch(() => {})
    if (this.swarm) await this.swarm.destroy().catch(() => {})
  }

  _open (name) {
    let p = this.drives.get(name)
    if (!p) {
      p = this._create(name)
      this.drives.set(name, p)
      p.catch(() => this.drives.delete(name))
    }
    return p
  }

  async _create (name) {
    const ns = name === 'pfp' ? 'gw-pfp' : `gw-${name}`
    const drive = new Hyperdrive(this.store.namespace(ns))
    await drive.ready()
    await drive.getBlobs() // a writable drive creates its blobs core here, so both can be mirrored now
    return { drive, name, mirroring: this._mirror(drive, name) }
  }

  /** Ask the blind peer to keep both cores (announced); resolves true once it accepted them. */
  async _mirror (drive, name) {
    if (!this.client) return false
    try {
      const priority = name === 'pfp' ? 0 : 1
      for (const core of [drive.core, drive.blobs.core]) {
        const res = await withTimeout(this.client.addCore(core, core.key, { announce: true, referrer: null, priority }), MIRROR_WAIT_MS)
        if (!Array.isArray(res) || !res[0]) throw new Error('the blind peer did not accept the core')
      }
      return true
    } catch (err) {
      this.log.warn('gateway drive not mirrored', { drive: name, error: errorMessage(err) })
      return false
    }
  }

  async info (params) {
    const d = await this._open(driveName(params))
    return this._describe(d, { mirrored: await d.mirroring })
  }

  _describe ({ drive, name }, extra = {}) {
    return {
      drive: name,
      driveKey: b4a.toString(drive.key, 'hex'),
      blobsKey: drive.blobs ? b4a.toString(drive.blobs.core.key, 'hex') : null,
      discoveryKey: b4a.toString(drive.discoveryKey, 'hex'),
      version: drive.version,
      coreLength: drive.core.length,
      blobLength: drive.blobs ? drive.blobs.core.length : 0,
      ...extra
    }
  }

  // ---- uploads ----

  async uploadBegin (params) {
    const name = driveName(params)
    const filePath = drivePath(params.path)
    const maxBytes = Number(params.maxBytes)
    if (!Number.isSafeInteger(maxBytes) || maxBytes < 1) throw new GatewayDriveError('invalid-params', 'maxBytes must be a positive integer')
    const expected = params.sha256 === undefined || params.sha256 === null ? null : String(params.sha256)
    if (expected !== null && !HEX64.test(expected)) throw new GatewayDriveError('invalid-params', 'sha256 must be 64 lowercase hex')
    const busy = name + filePath
    if (this.busyPaths.has(busy)) throw new GatewayDriveError('conflict', 'another upload of this path is in progress')
    if (this.uploads.size >= MAX_OPEN_UPLOADS) throw new GatewayDriveError('overloaded', 'too many uploads in progress')
    this.busyPaths.add(busy)
    const up = {
      id: randomBytes(12).toString('hex'),
      name,
      busy,
      path: filePath,
      maxBytes,
      expected,
      bytes: 0,
      hash: createHash('sha256'),
      stream: null,
      error: null,
      timer: null,
      queue: Promise.resolve()
    }
    this.uploads.set(up.id, up)
    this._touch(up)
    try {
      const d = await this._open(name)
      const metadata = {
        mtime: Date.now(),
        ...(typeof params.mime === 'string' ? { mime: params.mime.slice(0, 100) } : {}),
        ...(typeof params.fileName === 'string' ? { name: params.fileName.slice(0, 200) } : {})
      }
      up.drive = d
      up.metadata = metadata
      up.stream = d.drive.createWriteStream(filePath, { metadata })
      up.stream.on('error', (err) => { up.error = up.error || err })
    } catch (err) {
      this._discard(up, 'open-failed')
      throw err
    }
    return { uploadId: up.id, path: filePath, driveKey: b4a.toString(up.drive.drive.key, 'hex') }
  }

  _get (uploadId) {
    const up = typeof uploadId === 'string' ? this.uploads.get(uploadId) : null
    if (!up) throw new GatewayDriveError('not-found', 'no such upload (finished, aborted or timed out)')
    this._touch(up)
    return up
  }

  _touch (up) {
    clearTimeout(up.timer)
    up.timer = setTimeout(() => this._discard(up, 'idle'), UPLOAD_IDLE_MS)
    up.timer.unref()
  }

  /** Forget an upload and destroy its stream: no entry is written for it. */
  _discard (up, reason) {
    if (!this.uploads.has(up.id)) return
    clearTimeout(up.timer)
    this.uploads.delete(up.id)
    this.busyPaths.delete(up.busy)
    if (up.stream && !up.stream.destroyed) up.stream.destroy(new GatewayDriveError('aborted', reason))
  }

  async uploadChunk ({ uploadId, dataBase64 }) {
    const up = this._get(uploadId)
    if (typeof dataBase64 !== 'string') throw new GatewayDriveError('invalid-params', 'dataBase64 must be a string')
    const data = Buffer.from(dataBase64, 'base64')
    // Chunks of one upload are taken in call order, each after the previous one was accepted.
    const run = up.queue.then(() => this._write(up, data))
    up.queue = run.catch(() => {})
    return run
  }

  async _write (up, data) {
    if (up.error) throw this._failed(up)
    if (up.bytes + data.length > up.maxBytes) {
      this._discard(up, 'too-large')
      throw new GatewayDriveError('too-large', `the upload exceeds ${up.maxBytes} bytes`)
    }
    up.bytes += data.length
    up.hash.update(data)
    if (!up.stream.write(data)) {
      await new Promise((resolve) => {
        const done = () => { up.stream.off('drain', done); up.stream.off('close', done); resolve() }
        up.stream.on('drain', done)
        up.stream.on('close', done)
      })
    }
    if (up.error || up.stream.destroyed) throw this._failed(up)
    return { uploadId: up.id, bytes: up.bytes }
  }

  _failed (up) {
    const err = up.error
    this._discard(up, 'write-failed')
    return err instanceof GatewayDriveError ? err : new GatewayDriveError('drive-write-failed', `the drive write failed: ${errorMessage(err)}`)
  }

  async uploadCommit ({ uploadId }) {
    const up = this._get(uploadId)
    await up.queue
    if (up.error) throw this._failed(up)
    if (up.bytes === 0) {
      this._discard(up, 'empty')
      throw new GatewayDriveError('empty', 'an upload needs at least one byte')
    }
    const sha256 = up.hash.digest('hex')
    if (up.expected && up.expected !== sha256) {
      this._discard(up, 'hash-mismatch')
      throw new GatewayDriveError('hash-mismatch', 'the bytes do not hash to the file name')
    }
    clearTimeout(up.timer)
    try {
      // The entry is put by the stream's final step, with the metadata given at begin plus the digest.
      up.metadata.sha256 = sha256
      up.metadata.size = up.bytes
      await new Promise((resolve, reject) => {
        up.stream.once('finish', resolve)
        up.stream.once('error', reject)
        up.stream.end()
      })
    } catch (err) {
      this._discard(up, 'commit-failed')
      throw new GatewayDriveError('drive-write-failed', `the drive write failed: ${errorMessage(err)}`)
    }
    this.uploads.delete(up.id)
    this.busyPaths.delete(up.busy)
    const d = up.drive
    return this._describe(d, { path: up.path, bytes: up.bytes, sha256, mirrored: await d.mirroring })
  }

  async uploadAbort ({ uploadId }) {
    const up = typeof uploadId === 'string' ? this.uploads.get(uploadId) : null
    if (up) this._discard(up, 'aborted')
    return { uploadId, aborted: !!up }
  }

  /** A small JSON document (an offline HTTP artifact) written in one call. */
  async putJson (params) {
    const name = driveName(params)
    const filePath = drivePath(params.path)
    const text = JSON.stringify(params.document ?? null)
    if (text.length > 1024 * 1024) throw new GatewayDriveError('too-large', 'a JSON artifact is at most 1 MiB')
    if (this.busyPaths.has(name + filePath)) throw new GatewayDriveError('conflict', 'another upload of this path is in progress')
    const d = await this._open(name)
    const bytes = Buffer.from(text, 'utf8')
    const sha256 = createHash('sha256').update(bytes).digest('hex')
    await d.drive.put(filePath, bytes, { metadata: { mtime: Date.now(), mime: 'application/json', sha256, size: bytes.length } })
    return this._describe(d, { path: filePath, bytes: bytes.length, sha256, mirrored: await d.mirroring })
  }

  // ---- reads ----

  async read (params, ctx) {
    const name = driveName(params)
    const paths = Array.isArray(params.paths) ? params.paths.slice(0, 8).map((p) => drivePath(p)) : []
    if (paths.length === 0) throw new GatewayDriveError('invalid-params', 'paths must list drive paths')
    const range = parseRange(params)
    const d = await this._open(name)
    for (const p of paths) {
      const node = await d.drive.entry(p)
      if (!node || !node.value.blob) continue
      const head = describeEntry({ filePath: p, value: node.value, seq: node.seq, source: 'gateway-drive', driveKey: b4a.toString(d.drive.key, 'hex'), range })
      return streamEntry(ctx, head, d.drive.blobs.core, node.value.blob, { headOnly: params.headOnly === true })
    }
    throw new GatewayDriveError('not-found', 'the gateway drive holds no such file')
  }

  status () {
    return {
      drives: [...this.drives.keys()],
      uploads: this.uploads.size,
      mirroring: !!this.client
    }
  }
}

function withTimeout (promise, ms) {
  let timer
  return Promise.race([
    promise,
    new Promise((resolve, reject) => { timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms) })
  ]).finally(() => clearTimeout(timer))
}
