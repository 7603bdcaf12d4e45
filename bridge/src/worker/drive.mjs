import fs from 'node:fs'
import path from 'node:path'
import { createHash } from 'node:crypto'
import Hyperdrive from 'hyperdrive'
import b4a from 'b4a'

const MIME = {
  jpg: 'image/jpeg', jpeg: 'image/jpeg', png: 'image/png', gif: 'image/gif', webp: 'image/webp',
  svg: 'image/svg+xml', html: 'text/html', htm: 'text/html', css: 'text/css', js: 'text/javascript',
  mjs: 'text/javascript', json: 'application/json', csv: 'text/csv', md: 'text/markdown',
  pdf: 'application/pdf', txt: 'text/plain', wav: 'audio/wav', ogg: 'audio/ogg', flac: 'audio/flac'
}

export function mimeFor (file) {
  const ext = file.includes('.') ? file.split('.').pop().toLowerCase() : ''
  return MIME[ext] || 'application/octet-stream'
}

const CORS = {
  'access-control-allow-origin': '*',
  'access-control-allow-methods': 'GET,HEAD,OPTIONS',
  'cross-origin-resource-policy': 'cross-origin'
}

/**
 * The worker's file drive: one Hyperdrive on the worker's corestore. Relay files live at
 * /<identifier>/<sha256 hex of the bytes>, without extension.
 */
export class RelayDrive {
  constructor (store) {
    this.drive = new Hyperdrive(store.namespace('drive'))
  }

  async ready () {
    await this.drive.ready()
  }

  get key () {
    return b4a.toString(this.drive.key, 'hex')
  }

  async close () {
    await this.drive.close()
  }

  /** Store bytes under /<identifier>/<sha256>; existing paths are left untouched. */
  async putFile (identifier, bytes, metadata = null) {
    const hash = createHash('sha256').update(bytes).digest('hex')
    const p = `/${identifier}/${hash}`
    if (!(await this.drive.entry(p))) await this.drive.put(p, bytes, metadata ? { metadata } : {})
    return { path: p, hash, size: bytes.length }
  }

  /** Import every regular file of a local directory (not recursive). */
  async importDirectory (identifier, dir) {
    const out = []
    for (const name of fs.readdirSync(dir).sort()) {
      const full = path.join(dir, name)
      if (!fs.statSync(full).isFile()) continue
      out.push({ name, ...(await this.putFile(identifier, fs.readFileSync(full), { name, mime: mimeFor(name) })) })
    }
    return out
  }

  /** RelayProtocol handler body for GET /drive/:identifier/:file. */
  async serve ({ method, headers, params }, identifiers) {
    if (method === 'OPTIONS') return { statusCode: 204, headers: { ...CORS }, body: null }
    const hash = String(params.file).split('.')[0]
    if (!/^[0-9a-f]{64}$/.test(hash)) {
      return { statusCode: 404, headers: { 'content-type': 'application/json', ...CORS }, body: { error: 'File not found' } }
    }
    for (const id of identifiers) {
      const p = `/${id}/${hash}`
      const entry = await this.drive.entry(p)
      if (!entry) continue
      const etag = `"${hash}"`
      const base = {
        etag,
        'accept-ranges': 'bytes',
        'cache-control': 'private, max-age=31536000, immutable',
        ...CORS
      }
      if (headers['if-none-match'] === etag) return { statusCode: 304, headers: base, body: null }
      const bytes = await this.drive.get(p)
      return {
        statusCode: 200,
        headers: { ...base, 'content-type': mimeFor(params.file), 'content-length': String(bytes.length) },
        body: method === 'HEAD' ? null : bytes
      }
    }
    return { statusCode: 404, headers: { 'content-type': 'application/json', ...CORS }, body: { error: 'File not found' } }
  }
}
