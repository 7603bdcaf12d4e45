import path from 'node:path'
import { createRequire } from 'node:module'
import { BlindPeerError } from './errors.mjs'
import { BLIND_DIR } from './modules.mjs'

const hex = (buf) => Buffer.from(buf).toString('hex')

/** Drive entry values are JSON under Hyperdrive's `files` sub-encoding; keys are absolute paths. */
const FILES_PREFIX = 'files'

let filesEncoding = null

/** Hyperdrive's key encoding, from the blind peer's install tree (the tree its Hyperbee comes from). */
function filesKeyEncoding () {
  if (!filesEncoding) {
    const SubEncoder = createRequire(path.join(BLIND_DIR, 'package.json'))('sub-encoder')
    filesEncoding = new SubEncoder(FILES_PREFIX, 'utf-8')
  }
  return filesEncoding
}

/**
 * Stream the bytes [start, end] (inclusive) of a Hyperdrive blob held by `core` (the drive's blobs
 * core, hypercore 10 or 11: both have `seek`, `has` and `get`). Blocks are read without waiting for a
 * peer: the caller has checked that the whole blob is held locally, so a read never hangs on an
 * owner that is offline.
 */
export async function * blobChunks (core, blob, start, end) {
  let remaining = end - start + 1
  if (remaining <= 0) return
  const found = await core.seek(blob.byteOffset + start, { wait: false })
  if (!found) throw new BlindPeerError('drive-incomplete', 'the blob is not held locally')
  let [index, offset] = found
  while (remaining > 0) {
    const block = await core.get(index++, { wait: false })
    if (!block) throw new BlindPeerError('drive-incomplete', 'a blob block is not held locally')
    const piece = block.subarray(offset, Math.min(block.length, offset + remaining))
    offset = 0
    remaining -= piece.length
    if (piece.length) yield piece
  }
}

/**
 * The HTTP-ish description of one drive entry: size, validators and the requested byte range.
 * `range` is `{start, end}` (end inclusive, may be past the end), `{suffix}` (the last bytes) or null for
 * the whole file.
 */
export function describeEntry ({ filePath, value, seq, source, driveKey, range }) {
  const blob = value.blob
  const size = blob ? blob.byteLength : 0
  const meta = value.metadata && typeof value.metadata === 'object' ? value.metadata : {}
  const name = filePath.split('/').pop()
  // Worker files are named by their SHA-256, which is the worker's own ETag; gateway uploads carry theirs.
  const digest = typeof meta.sha256 === 'string' ? meta.sha256 : (/^[0-9a-f]{64}$/.test(name) ? name : null)
  const head = {
    source,
    driveKey,
    path: filePath,
    size,
    etag: digest ? `"${digest}"` : `"${driveKey.slice(0, 16)}-${seq}-${size}"`,
    lastModified: Number.isSafeInteger(meta.mtime) ? meta.mtime : null,
    contentType: typeof meta.mime === 'string' ? meta.mime : (typeof meta.contentType === 'string' ? meta.contentType : null),
    name: typeof meta.name === 'string' ? meta.name : null,
    start: 0,
    end: size - 1,
    rangeUnsatisfiable: false
  }
  if (range && range.suffix !== undefined) {
    if (range.suffix <= 0 || size === 0) head.rangeUnsatisfiable = true
    else Object.assign(head, { start: Math.max(0, size - range.suffix), end: size - 1 })
  } else if (range) {
    const start = Number.isSafeInteger(range.start) ? range.start : null
    const end = Number.isSafeInteger(range.end) ? Math.min(range.end, size - 1) : size - 1
    if (start === null || start < 0 || start >= size || end < start) head.rangeUnsatisfiable = true
    else Object.assign(head, { start, end })
  }
  return head
}

/** `{start, end}` from RPC params (both optional non-negative integers) or null. */
export function parseRange (params) {
  if (params.suffix !== undefined && params.suffix !== null) {
    const suffix = Number(params.suffix)
    if (!Number.isSafeInteger(suffix) || suffix < 0) throw new BlindPeerError('invalid-params', 'suffix must be a non-negative integer')
    return { suffix }
  }
  if (params.start === undefined || params.start === null) return null
  const start = Number(params.start)
  const end = params.end === undefined || params.end === null ? Number.MAX_SAFE_INTEGER : Number(params.end)
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 0 || end < 0) {
    throw new BlindPeerError('invalid-params', 'start and end must be non-negative integers')
  }
  return { start, end }
}

/**
 * Write one located entry on an RPC stream: the head (see describeEntry), then the requested bytes chunk
 * by chunk under the stream's credit, unless only the head was asked for or the range is unsatisfiable.
 */
export async function streamEntry (ctx, head, blobsCore, blob, { headOnly }) {
  const writer = ctx.openStream(head)
  let bytes = 0
  if (!headOnly && !head.rangeUnsatisfiable && head.size > 0) {
    for await (const piece of blobChunks(blobsCore, blob, head.start, head.end)) {
      await writer.write(piece)
      bytes += piece.length
    }
  }
  return { done: true, bytes }
}

/**
 * Reads files from Hyperdrives that workers mirror to the gateway's blind peer (corestore 7), straight
 * from the blind peer's store: the metadata core is read as the Hyperbee it is, the blobs core named in
 * its header is read block by block. Only what the blind peer holds is served; a file whose blocks are
 * not all held counts as absent (the next source is tried).
 */
export class DriveReader {
  constructor (service) {
    this.service = service
  }

  /** The first of `paths` present in one of `driveKeys`, with its blobs core open; null when none is. */
  async locate ({ driveKeys, paths }) {
    const m = this.service.m
    const keyEncoding = filesKeyEncoding()
    for (const driveKey of driveKeys) {
      const key = this.service.decodeKey(driveKey, 'driveKey')
      if (!(await this.service.bp.db.getCoreRecord(key))) continue
      const core = this.service.bp.store.get({ key })
      let bee = null
      try {
        await core.ready()
        if (!(await core.has(0))) continue
        bee = new m.Hyperbee(core, { keyEncoding: 'utf-8', valueEncoding: 'json', extension: false })
        await bee.ready()
        const header = await bee.getHeader({ wait: false })
        const feed = header && header.metadata && header.metadata.contentFeed
        for (const p of paths) {
          const node = await bee.get(p, { keyEncoding, wait: false }).catch(() => null)
          if (!node || !node.value || (node.value.blob === null && node.value.linkname)) continue
          const blob = node.value.blob
          let blobs = null
          if (blob && blob.byteLength > 0) {
            if (!feed) continue
            blobs = this.service.bp.store.get({ key: Buffer.from(feed).subarray(0, 32) })
            await blobs.ready()
            if (!(await blobs.has(blob.blockOffset, blob.blockOffset + blob.blockLength))) {
              await blobs.close().catch(() => {})
              continue
            }
          }
          return { bee, core, blobs, node, path: p, driveKey: hex(key) }
        }
      } catch (err) {
        if (err instanceof BlindPeerError) throw err
        // Not a drive (or not readable yet): try the next key.
      }
      if (bee) await bee.close().catch(() => {})
      await core.close().catch(() => {})
    }
    return null
  }

  async read (params, ctx) {
    const driveKeys = Array.isArray(params.driveKeys) ? params.driveKeys.slice(0, 32) : []
    const paths = Array.isArray(params.paths) ? params.paths.filter((p) => typeof p === 'string' && p.startsWith('/')).slice(0, 8) : []
    if (paths.length === 0) throw new BlindPeerError('invalid-params', 'paths must list absolute drive paths')
    const range = parseRange(params)
    const found = await this.locate({ driveKeys, paths })
    if (!found) throw new BlindPeerError('not-found', 'no mirrored drive holds this file')
    try {
      const head = describeEntry({ filePath: found.path, value: found.node.value, seq: found.node.seq, source: 'mirror', driveKey: found.driveKey, range })
      return await streamEntry(ctx, head, found.blobs, found.node.value.blob, { headOnly: params.headOnly === true })
    } finally {
      if (found.blobs) await found.blobs.close().catch(() => {})
      await found.bee.close().catch(() => {})
      await found.core.close().catch(() => {})
    }
  }
}
