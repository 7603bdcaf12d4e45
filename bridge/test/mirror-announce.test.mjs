import { test } from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { BlindPeerService } from '../src/blind/blind-peer.mjs'
import { loadBlindModules } from '../src/blind/modules.mjs'

// The live/owner decision of mirror.progress, on a service whose blind peer is a stand-in holding open
// cores (no swarm): which peers count as the owner's contact, and when a report is repeated.

const OWNER = Buffer.alloc(32, 1)
const LEASE_SWARM = Buffer.alloc(32, 2)
const STRANGER = Buffer.alloc(32, 3)
const RELAY = Buffer.alloc(32, 9)
const VIEW = Buffer.alloc(32, 7)

function service (announceIntervalMs) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ht-announce-'))
  const svc = new BlindPeerService({ storageDir: dir, maxBytes: 1e9, staleMs: 0, announceIntervalMs, logger: { info () {}, warn () {} } })
  svc.m = loadBlindModules()
  svc.trust.trustForRelay(OWNER.toString('hex'), RELAY.toString('hex'), [RELAY.toString('hex')])
  svc.trust.trustInternal(LEASE_SWARM)
  const core = { key: VIEW, opened: true, closing: false, length: 10, contiguousLength: 10, peers: [] }
  svc.bp = { activeReplication: new Map([['view', { record: { key: VIEW, referrer: RELAY }, core }]]) }
  const reports = []
  svc.on('mirror.progress', (data) => reports.push(data))
  return { svc, core, reports, cleanup: () => fs.rmSync(dir, { recursive: true, force: true }) }
}

const peer = (remotePublicKey, remoteLength) => ({ remotePublicKey, remoteLength })
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

test('only the owner\'s peers make a report live; the lease swarm and strangers do not', (t) => {
  const { svc, core, reports, cleanup } = service(60_000)
  t.after(cleanup)
  core.peers = [peer(LEASE_SWARM, 12), peer(STRANGER, 11)]
  svc._progressTick()
  assert.equal(reports.length, 1)
  assert.equal(reports[0].livePeers, 0, 'the bridge\'s own lease swarm and an unknown reader are not the owner')
  assert.equal(reports[0].remoteLength, 12, 'their lengths still count as lengths seen on the wire')
  core.peers.push(peer(OWNER, 12))
  svc._progressTick()
  assert.equal(reports.length, 2, 'the owner connecting is reported at once')
  assert.equal(reports[1].livePeers, 1)
  core.peers = []
  svc._progressTick()
  assert.equal(reports.length, 3, 'and so is the owner leaving')
  assert.equal(reports[2].livePeers, 0)
})

test('while the owner is connected an unchanged report is repeated every announce interval, never without it', async (t) => {
  const { svc, core, reports, cleanup } = service(100)
  t.after(cleanup)
  core.peers = [peer(OWNER, 10)]
  svc._progressTick()
  svc._progressTick()
  assert.equal(reports.length, 1, 'nothing changed and the interval has not passed')
  await sleep(120)
  svc._progressTick()
  assert.equal(reports.length, 2)
  assert.deepEqual({ ...reports[1], updatedAt: 0 }, { ...reports[0], updatedAt: 0 })
  assert.ok(reports[1].updatedAt >= reports[0].updatedAt + 100)
  core.peers = [peer(LEASE_SWARM, 10)]
  svc._progressTick()
  await sleep(120)
  svc._progressTick()
  assert.equal(reports.length, 3, 'the owner left: one report saying so, then silence')
  assert.equal(reports[2].livePeers, 0)
})

test('the start-up snapshot is never a live report', async (t) => {
  const { svc, reports, cleanup } = service(100)
  t.after(cleanup)
  svc.listRecords = async () => [{ key: VIEW, length: 10 }]
  svc.bp.store = { storage: { getInfos: async () => [{ head: { length: 10 }, hints: { contiguousLength: 10 } }] } }
  await svc._snapshotProgress()
  assert.equal(reports.length, 1)
  assert.equal(reports[0].livePeers, 0)
  assert.equal(reports[0].remoteLength, 10)
})
