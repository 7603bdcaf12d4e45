import { describe, it, before, after } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { createHash, randomBytes } from 'node:crypto'
import { stopProcess, waitFor } from './helpers/procs.mjs'
import { startBridge, startWorker, stopStack } from './helpers/bridge-stack.mjs'
import { startFakeGateway } from './helpers/fake-gateway.mjs'

const SECRET = 'gateway-drives-test-secret'
const sha = (b) => createHash('sha256').update(b).digest('hex')

async function upload (rpc, { relayKey, segments, bytes, chunk = 100_000, maxBytes = 10_000_000, sha256 }) {
  const begun = await rpc.call('drive.upload.begin', { kind: 'relay', relayKey, path: segments, maxBytes, sha256 })
  for (let off = 0; off < bytes.length; off += chunk) {
    await rpc.call('drive.upload.chunk', { uploadId: begun.uploadId, dataBase64: bytes.subarray(off, off + chunk).toString('base64') })
  }
  return { begun, done: await rpc.call('drive.upload.commit', { uploadId: begun.uploadId }) }
}

describe('files while workers are offline: mirrored worker drives and gateway-owned drives', { timeout: 170_000 }, () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ht-drives-'))
  const file = Buffer.concat([Buffer.from('mirrored file '), randomBytes(300_000)])
  const relayKey = 'ab'.repeat(32)
  let bridge, rpc, worker, gateway, ready, swarmFile

  before(async () => {
    gateway = await startFakeGateway(SECRET)
    fs.mkdirSync(path.join(dir, 'files'))
    fs.writeFileSync(path.join(dir, 'files', 'big.bin'), file)
    ;({ bridge, rpc, swarmFile } = await startBridge({ dir, subscribe: ['mirror.*', 'peer.*'], env: { HYPERTUNA_BRIDGE_MIRROR_PROGRESS_MS: '250' } }))
    worker = startWorker({ dir, swarmFile, gateway, secret: SECRET, name: 'files', args: ['--blind-peer', 'gateway', '--drive-import', path.join(dir, 'files'), '--register-interval-ms', '3000'] })
    ready = await worker.ready
  })

  after(() => stopStack({ rpc, worker, bridge, gateway, dir }))

  it('serves a worker file from its mirrored drive after the worker stopped, whole and by range', async () => {
    await rpc.call('blindPeer.trust', { peerKey: ready.swarmPublicKey, relayKey: ready.relayKey, keys: [ready.relayKey] })
    const meta = await waitFor(() => gateway.metadata.find((m) => m.payload.cores.some((c) => c.type === 'hyperdrive-blobs')), { timeoutMs: 40_000, what: 'drive metadata' })
    const blobs = meta.payload.cores.find((c) => c.type === 'hyperdrive-blobs')
    await rpc.waitEvent((f) => f.event === 'mirror.progress' && f.data.coreKey === blobs.coreKey && f.data.contiguousLength >= blobs.length && blobs.length > 0, 40_000)
    await stopProcess(worker)
    worker = null
    const hash = sha(file)
    const params = { sources: ['mirror', 'gateway-drive'], relayKey: ready.relayKey, driveKeys: ['cd'.repeat(32), ready.driveKey], mirrorPaths: [`/${ready.identifier}/${hash}`] }
    const whole = await rpc.call('drive.read', params)
    assert.equal(whole.head.source, 'mirror')
    assert.equal(whole.head.size, file.length)
    assert.equal(whole.head.etag, `"${hash}"`)
    assert.ok(whole.body.equals(file))
    const part = await rpc.call('drive.read', { ...params, start: 70_000, end: 200_000 })
    assert.deepEqual([part.head.start, part.head.end], [70_000, 200_000])
    assert.ok(part.body.equals(file.subarray(70_000, 200_001)))
    const tail = await rpc.call('drive.read', { ...params, start: file.length - 5 })
    assert.ok(tail.body.equals(file.subarray(file.length - 5)))
    const past = await rpc.call('drive.read', { ...params, start: file.length })
    assert.equal(past.head.rangeUnsatisfiable, true)
    assert.equal(past.body.length, 0)
    await assert.rejects(rpc.call('drive.read', { ...params, mirrorPaths: [`/${ready.identifier}/${'0'.repeat(64)}`] }), (e) => e.code === 'not-found')
  })

  it('stores an upload in the relay gateway drive, mirrored and announced, and reads it back', async () => {
    const bytes = randomBytes(450_000)
    const hash = sha(bytes)
    const { done } = await upload(rpc, { relayKey, segments: [relayKey, hash], bytes, sha256: hash })
    assert.equal(done.bytes, bytes.length)
    assert.equal(done.sha256, hash)
    assert.equal(done.mirrored, true)
    assert.equal(done.path, `/${relayKey}/${hash}`)
    assert.ok(done.version > 0)
    const list = await rpc.call('mirror.list')
    for (const key of [done.driveKey, done.blobsKey]) {
      const core = list.cores.find((c) => c.coreKey === key)
      assert.ok(core, 'both drive cores are mirrored')
      assert.equal(core.announce, true)
    }
    const read = await rpc.call('drive.read', { sources: ['mirror', 'gateway-drive'], relayKey, driveKeys: [], gatewayPaths: [[relayKey, hash]], start: 10, end: 19 })
    assert.equal(read.head.source, 'gateway-drive')
    assert.equal(read.head.etag, `"${hash}"`)
    assert.ok(read.head.lastModified > 0)
    assert.ok(read.body.equals(bytes.subarray(10, 20)))
    // The blind peer caught up: the same file is readable from its copy of the gateway drive.
    await waitFor(async () => {
      try {
        const m = await rpc.call('drive.read', { sources: ['mirror'], driveKeys: [done.driveKey], mirrorPaths: [done.path] })
        return m.body.equals(bytes)
      } catch { return false }
    }, { timeoutMs: 20_000, what: 'the blind peer copy of the gateway drive' })
  })

  it('one upload per path at a time; oversized, mismatching and aborted uploads leave no entry', async () => {
    const name = sha(Buffer.from('contended'))
    const first = await rpc.call('drive.upload.begin', { kind: 'relay', relayKey, path: [relayKey, name], maxBytes: 1000 })
    await assert.rejects(rpc.call('drive.upload.begin', { kind: 'relay', relayKey, path: [relayKey, name], maxBytes: 1000 }), (e) => e.code === 'conflict')
    await rpc.call('drive.upload.chunk', { uploadId: first.uploadId, dataBase64: Buffer.alloc(600).toString('base64') })
    await assert.rejects(rpc.call('drive.upload.chunk', { uploadId: first.uploadId, dataBase64: Buffer.alloc(600).toString('base64') }), (e) => e.code === 'too-large')
    await assert.rejects(rpc.call('drive.upload.commit', { uploadId: first.uploadId }), (e) => e.code === 'not-found')
    const gatewayOnly = { sources: ['gateway-drive'], relayKey, gatewayPaths: [[relayKey, name]] }
    await assert.rejects(rpc.call('drive.read', gatewayOnly), (e) => e.code === 'not-found')

    const wrong = await rpc.call('drive.upload.begin', { kind: 'relay', relayKey, path: [relayKey, name], maxBytes: 1000, sha256: name })
    await rpc.call('drive.upload.chunk', { uploadId: wrong.uploadId, dataBase64: Buffer.from('not contended').toString('base64') })
    await assert.rejects(rpc.call('drive.upload.commit', { uploadId: wrong.uploadId }), (e) => e.code === 'hash-mismatch')
    await assert.rejects(rpc.call('drive.read', gatewayOnly), (e) => e.code === 'not-found')

    const aborted = await rpc.call('drive.upload.begin', { kind: 'relay', relayKey, path: [relayKey, name], maxBytes: 1000 })
    await rpc.call('drive.upload.chunk', { uploadId: aborted.uploadId, dataBase64: Buffer.from('contended').toString('base64') })
    assert.deepEqual(await rpc.call('drive.upload.abort', { uploadId: aborted.uploadId }), { uploadId: aborted.uploadId, aborted: true })
    await assert.rejects(rpc.call('drive.read', gatewayOnly), (e) => e.code === 'not-found')

    // The path is free again and a complete upload lands.
    await upload(rpc, { relayKey, segments: [relayKey, name], bytes: Buffer.from('contended'), sha256: name })
    assert.equal((await rpc.call('drive.read', gatewayOnly)).body.toString(), 'contended')
  })

  it('refuses paths outside the workers\' file-name alphabet and stores JSON artifacts', async () => {
    for (const bad of [[relayKey, '..'], [relayKey, '.'], ['..', 'x'], [relayKey, 'a/b'], [relayKey, 'a\u0000b'], [relayKey, ''], []]) {
      await assert.rejects(rpc.call('drive.upload.begin', { kind: 'relay', relayKey, path: bad, maxBytes: 10 }), (e) => e.code === 'invalid-path', JSON.stringify(bad))
    }
    await assert.rejects(rpc.call('drive.upload.begin', { kind: 'relay', relayKey: '../x', path: ['a'], maxBytes: 10 }), (e) => e.code === 'invalid-params')
    const art = await rpc.call('drive.putJson', { kind: 'relay', relayKey, path: ['join', '1700000000000-abc.json'], document: { category: 'join', body: { a: 1 } } })
    assert.equal(art.path, '/join/1700000000000-abc.json')
    const read = await rpc.call('drive.read', { sources: ['gateway-drive'], relayKey, gatewayPaths: [['join', '1700000000000-abc.json']] })
    assert.deepEqual(JSON.parse(read.body), { category: 'join', body: { a: 1 } })
    assert.equal(read.head.contentType, 'application/json')
  })

  it('keeps the gateway drives across a bridge restart', async () => {
    const before = await rpc.call('drive.info', { kind: 'relay', relayKey })
    rpc.close()
    await stopProcess(bridge)
    ;({ bridge, rpc } = await startBridge({ dir }))
    const after = await rpc.call('drive.info', { kind: 'relay', relayKey })
    assert.equal(after.driveKey, before.driveKey)
    assert.equal(after.version, before.version)
    const read = await rpc.call('drive.read', { sources: ['gateway-drive'], relayKey, gatewayPaths: [['join', '1700000000000-abc.json']] })
    assert.equal(read.head.source, 'gateway-drive')
  })
})
