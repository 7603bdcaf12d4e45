import test from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { RpcServer, RpcError } from '../src/rpc/server.mjs'
import { TestRpcClient } from './helpers/rpc-client.mjs'

const made = []
function tmpdir () {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ht-rpc-'))
  made.push(dir)
  return dir
}
test.after(() => {
  for (const dir of made) fs.rmSync(dir, { recursive: true, force: true })
})

async function makeServer (opts = {}) {
  const server = new RpcServer({ logger: quietLogger(), ...opts })
  server.register('echo', async (params) => ({ echo: params }))
  server.register('fail', async () => { throw new RpcError('peer-unavailable', 'nope') })
  server.register('crash', async () => { throw new Error('boom') })
  server.register('blob', async (params, ctx) => {
    const size = params.size
    const w = ctx.openStream({ size }, { window: params.window })
    const chunk = 1000
    let sent = 0
    for (let off = 0; off < size; off += chunk) {
      const n = Math.min(chunk, size - off)
      await w.write(Buffer.alloc(n, off / chunk % 256))
      sent++
    }
    return { chunks: sent }
  }, { streaming: true })
  return server
}

function quietLogger () {
  const noop = () => {}
  const l = { debug: noop, info: noop, warn: noop, error: noop }
  l.child = () => l
  return l
}

test('unix socket is created with mode 0600 and a live socket is never taken over', async (t) => {
  const dir = tmpdir()
  const sock = path.join(dir, 'sub', 'b.sock')
  const server = await makeServer()
  t.after(() => server.close())
  await server.listenUnix(sock)
  assert.equal(fs.statSync(sock).mode & 0o777, 0o600)
  const second = await makeServer()
  await assert.rejects(second.listenUnix(sock), /already listening/)
})

test('methods other than hello are refused before hello', async (t) => {
  const dir = tmpdir()
  const server = await makeServer()
  t.after(() => server.close())
  const p = await server.listenUnix(path.join(dir, 'b.sock'))
  const c = await TestRpcClient.connect(p)
  t.after(() => c.close())
  await assert.rejects(c.call('echo', { a: 1 }), (e) => e.code === 'unauthenticated')
  const hello = await c.call('hello', { protocol: 1 })
  assert.equal(hello.protocol, 1)
  assert.ok(hello.methods.includes('echo'))
  assert.deepEqual(await c.call('echo', { a: 1 }), { echo: { a: 1 } })
})

test('unsupported protocol versions are refused', async (t) => {
  const server = await makeServer()
  t.after(() => server.close())
  const p = await server.listenUnix(path.join(tmpdir(), 'b.sock'))
  const c = await TestRpcClient.connect(p)
  t.after(() => c.close())
  await assert.rejects(c.call('hello', { protocol: 99 }), (e) => e.code === 'unsupported-version')
  const ok = await c.call('hello', { versions: [99, 1] })
  assert.equal(ok.protocol, 1)
})

test('bad JSON, bad shapes and unknown methods get error replies and the connection survives', async (t) => {
  const server = await makeServer()
  t.after(() => server.close())
  const p = await server.listenUnix(path.join(tmpdir(), 'b.sock'))
  const c = await TestRpcClient.connect(p)
  t.after(() => c.close())
  await c.call('hello', { protocol: 1 })
  c.writeRaw('{not json\n')
  let r = await c.nextOrphan()
  assert.equal(r.ok, false)
  assert.equal(r.error.code, 'parse-error')
  c.writeRaw('[1,2,3]\n')
  r = await c.nextOrphan()
  assert.equal(r.error.code, 'invalid-request')
  c.writeRaw(JSON.stringify({ id: 'x', method: 'echo', params: [1] }) + '\n')
  await assert.rejects(c.call('nope.method'), (e) => e.code === 'unknown-method')
  await assert.rejects(c.call('fail'), (e) => e.code === 'peer-unavailable' && e.message === 'nope')
  await assert.rejects(c.call('crash'), (e) => e.code === 'internal')
  assert.deepEqual(await c.call('echo', { still: 'alive' }), { echo: { still: 'alive' } })
})

test('oversized frames are rejected without killing the connection', async (t) => {
  const server = await makeServer({ limits: { maxLineBytes: 1024 } })
  t.after(() => server.close())
  const p = await server.listenUnix(path.join(tmpdir(), 'b.sock'))
  const c = await TestRpcClient.connect(p)
  t.after(() => c.close())
  await c.call('hello', { protocol: 1 })
  c.writeRaw(JSON.stringify({ id: 99, method: 'echo', params: { pad: 'x'.repeat(5000) } }) + '\n')
  const r = await c.nextOrphan()
  assert.equal(r.error.code, 'frame-too-large')
  assert.deepEqual(await c.call('echo', { ok: 1 }), { echo: { ok: 1 } })
})

test('a configured secret is required and checked, and a wrong one closes the connection', async (t) => {
  const server = await makeServer({ secret: 's3cret' })
  t.after(() => server.close())
  const p = await server.listenUnix(path.join(tmpdir(), 'b.sock'))
  const bad = await TestRpcClient.connect(p)
  await assert.rejects(bad.call('hello', { protocol: 1, secret: 'wrong' }), (e) => e.code === 'unauthenticated')
  await new Promise((resolve) => (bad.closed ? resolve() : bad.once('close', resolve)))
  const none = await TestRpcClient.connect(p)
  t.after(() => none.close())
  await assert.rejects(none.call('hello', { protocol: 1 }), (e) => e.code === 'unauthenticated')
  const good = await TestRpcClient.connect(p)
  t.after(() => good.close())
  await good.call('hello', { protocol: 1, secret: 's3cret' })
  assert.deepEqual(await good.call('echo', {}), { echo: {} })
})

test('loopback TCP requires a secret and refuses non-loopback binds', async (t) => {
  const open = await makeServer()
  await assert.rejects(open.listenTcp('127.0.0.1', 0), /requires HYPERTUNA_BRIDGE_SECRET/)
  const server = await makeServer({ secret: 'tcp-secret' })
  t.after(() => server.close())
  await assert.rejects(server.listenTcp('0.0.0.0', 0), /loopback/)
  const addr = await server.listenTcp('127.0.0.1', 0)
  const c = await TestRpcClient.connect({ host: '127.0.0.1', port: addr.port })
  t.after(() => c.close())
  await assert.rejects(c.call('echo', {}), (e) => e.code === 'unauthenticated')
  await c.call('hello', { protocol: 1, secret: 'tcp-secret' })
  assert.deepEqual(await c.call('echo', { x: 1 }), { echo: { x: 1 } })
})

test('streams respect credits: nothing beyond the window is sent until credit arrives', async (t) => {
  const server = await makeServer()
  t.after(() => server.close())
  const p = await server.listenUnix(path.join(tmpdir(), 'b.sock'))
  const c = await TestRpcClient.connect(p)
  t.after(() => c.close())
  await c.call('hello', { protocol: 1 })
  const full = await c.call('blob', { size: 10_500, window: 2 })
  assert.equal(full.body.length, 10_500)
  assert.deepEqual(full.head, { size: 10_500 })
  assert.equal(full.result.chunks, 11)

  const pending = c.call('blob', { size: 5000, window: 2 }, { autoCredit: false })
  const id = c.nextId - 1
  await new Promise((resolve) => setTimeout(resolve, 300))
  const entry = c.pending.get(id)
  assert.equal(entry.chunks.length, 2, 'only the window is sent without credit')
  c.notify('stream.credit', { id, credits: 10 })
  const done = await pending
  assert.equal(done.body.length, 5000)

  const cancelled = c.call('blob', { size: 50_000, window: 1 }, { autoCredit: false })
  const cid = c.nextId - 1
  await new Promise((resolve) => setTimeout(resolve, 100))
  c.notify('stream.cancel', { id: cid })
  await assert.rejects(cancelled, (e) => e.code === 'cancelled')
})

test('events reach only subscribed connections, with sequence numbers', async (t) => {
  const server = await makeServer()
  t.after(() => server.close())
  const p = await server.listenUnix(path.join(tmpdir(), 'b.sock'))
  const a = await TestRpcClient.connect(p)
  const b = await TestRpcClient.connect(p)
  t.after(() => { a.close(); b.close() })
  await a.call('hello', { protocol: 1, subscribe: ['peer.*'] })
  await b.call('hello', { protocol: 1 })
  assert.ok(server.hasSubscribers('peer.connected'))
  assert.ok(!server.hasSubscribers('mirror.added'))
  assert.equal(server.broadcast('peer.connected', { peerKey: 'k' }), 1)
  server.broadcast('other.thing', {})
  const ev = await a.waitEvent((f) => f.event === 'peer.connected', 5000)
  assert.equal(ev.data.peerKey, 'k')
  assert.equal(typeof ev.seq, 'number')
  await new Promise((resolve) => setTimeout(resolve, 100))
  assert.equal(b.events.length, 0)
  assert.equal(a.events.length, 1)
})
