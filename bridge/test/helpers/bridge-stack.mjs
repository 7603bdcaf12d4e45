import fs from 'node:fs'
import path from 'node:path'
import { spawnReady, stopProcess } from './procs.mjs'
import { TestRpcClient } from './rpc-client.mjs'

/**
 * A bridge in local-testnet mode with its state under `dir`, and an RPC client that said hello (with
 * `subscribe` topics). Resolves once both are ready.
 */
export async function startBridge ({ dir, env = {}, subscribe = [], client = 'bridge-test' }) {
  const socketPath = path.join(dir, 'bridge.sock')
  const swarmFile = path.join(dir, 'swarm.json')
  const bridge = spawnReady('src/main.mjs', [], {
    marker: 'HYPERTUNA_BRIDGE_READY',
    env: {
      HYPERTUNA_BRIDGE_SOCKET: socketPath,
      HYPERTUNA_SWARM_BOOTSTRAP: 'local',
      HYPERTUNA_SWARM_BOOTSTRAP_FILE: swarmFile,
      HYPERTUNA_BRIDGE_STORAGE: path.join(dir, 'bridge'),
      ...env
    }
  })
  await bridge.ready
  const rpc = await TestRpcClient.connect(socketPath)
  await rpc.call('hello', { protocol: 1, client, subscribe })
  return { bridge, rpc, socketPath, swarmFile }
}

/** A reference worker on that bridge's testnet, registering with `gateway` (a fake gateway). */
export function startWorker ({ dir, swarmFile = path.join(dir, 'swarm.json'), gateway, secret, name, args = [] }) {
  return spawnReady('src/worker/main.mjs', [
    '--bootstrap-file', swarmFile,
    '--storage', path.join(dir, 'worker'),
    '--name', name,
    '--gateway-url', gateway.url,
    '--secret', secret,
    ...args
  ], { marker: 'HYPERTUNA_WORKER_READY' })
}


/** Stop what a suite started (any of them may be missing if its setup failed) and remove its directory. */
export async function stopStack ({ rpc, worker, bridge, gateway, dir }) {
  if (rpc) rpc.close()
  await stopProcess(worker)
  await stopProcess(bridge)
  if (gateway) await gateway.close()
  fs.rmSync(dir, { recursive: true, force: true })
}
