import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { ReferenceWorker } from '../../src/worker/worker.mjs'
import { startLocalTestnet } from '../../src/swarm/bootstrap.mjs'

/** A logger that drops everything (the tests read what they need from the worker's state). */
export function quiet () {
  const noop = () => {}
  const l = { debug: noop, info: noop, warn: noop, error: noop }
  l.child = () => l
  return l
}

/** A reference worker on a testnet of its own, stopped and removed after the test `t`. */
export async function startTestWorker (t, opts = {}, prefix = 'ht-worker-') {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix))
  const testnet = await startLocalTestnet(4)
  const worker = new ReferenceWorker({ bootstrap: testnet.bootstrap, storageDir: dir, logger: quiet(), telemetryIntervalMs: 0, ...opts })
  await worker.start()
  t.after(async () => {
    await worker.stop()
    await testnet.destroy()
    fs.rmSync(dir, { recursive: true, force: true })
  })
  return { worker, testnet, dir }
}
