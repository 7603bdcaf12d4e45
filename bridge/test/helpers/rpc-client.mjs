import net from 'node:net'
import { EventEmitter } from 'node:events'

/** Small NDJSON RPC client for tests (the production client is the Python one). */
export class TestRpcClient extends EventEmitter {
  constructor (sock) {
    super()
    this.sock = sock
    this.nextId = 1
    this.pending = new Map()
    this.events = []
    this.replies = []
    let buf = ''
    sock.setEncoding('utf8')
    sock.on('data', (d) => {
      buf += d
      let i
      while ((i = buf.indexOf('\n')) !== -1) {
        const line = buf.slice(0, i)
        buf = buf.slice(i + 1)
        if (line.trim()) this._onframe(JSON.parse(line))
      }
    })
    sock.on('close', () => {
      this.closed = true
      for (const p of this.pending.values()) p.reject(new Error('closed'))
      this.pending.clear()
      this.emit('close')
    })
  }

  static connect (target) {
    return new Promise((resolve, reject) => {
      const sock = typeof target === 'string' ? net.connect(target) : net.connect(target.port, target.host)
      sock.once('connect', () => resolve(new TestRpcClient(sock)))
      sock.once('error', reject)
    })
  }

  _onframe (f) {
    if (f.event) {
      this.events.push(f)
      this.emit('event', f)
      return
    }
    const p = f.id !== null && f.id !== undefined ? this.pending.get(f.id) : null
    if (!p) {
      this.replies.push(f)
      this.emit('orphan', f)
      return
    }
    if (f.stream === 'head') { p.head = f.data; return }
    if (f.stream === 'chunk') {
      p.chunks.push(Buffer.from(f.data, 'base64'))
      if (p.autoCredit) this.notify('stream.credit', { id: f.id, credits: 1 })
      return
    }
    this.pending.delete(f.id)
    if (f.ok) p.resolve(p.head ? { head: p.head, body: Buffer.concat(p.chunks), result: f.result } : f.result)
    else {
      const err = new Error(f.error.message)
      err.code = f.error.code
      p.reject(err)
    }
  }

  call (method, params = {}, { timeoutMs = 30_000, autoCredit = true } = {}) {
    const id = this.nextId++
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id)
        reject(new Error(`rpc ${method} timed out`))
      }, timeoutMs)
      this.pending.set(id, {
        resolve: (v) => { clearTimeout(timer); resolve(v) },
        reject: (e) => { clearTimeout(timer); reject(e) },
        chunks: [],
        head: null,
        autoCredit
      })
      this.sock.write(JSON.stringify({ id, method, params }) + '\n')
    })
  }

  notify (method, params) {
    this.sock.write(JSON.stringify({ method, params }) + '\n')
  }

  writeRaw (text) {
    this.sock.write(text)
  }

  nextOrphan (timeoutMs = 5000) {
    if (this.replies.length) return Promise.resolve(this.replies.shift())
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('no reply')), timeoutMs)
      this.once('orphan', (f) => { clearTimeout(timer); this.replies.shift(); resolve(f) })
    })
  }

  waitEvent (pred, timeoutMs = 30_000) {
    const found = this.events.find(pred)
    if (found) return Promise.resolve(found)
    return new Promise((resolve, reject) => {
      const onev = (f) => {
        if (!pred(f)) return
        clearTimeout(timer)
        this.removeListener('event', onev)
        resolve(f)
      }
      const timer = setTimeout(() => {
        this.removeListener('event', onev)
        reject(new Error('event not seen in time'))
      }, timeoutMs)
      this.on('event', onev)
    })
  }

  close () {
    this.sock.end()
  }
}

/** Client-bound frames of an inline `peer.request` result (NDJSON body; an empty body has none). */
export function ndjson (result) {
  const text = Buffer.from(result.bodyBase64, 'base64').toString('utf8')
  return text === '' ? [] : text.split('\n').map((l) => JSON.parse(l))
}
