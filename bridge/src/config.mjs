import path from 'node:path'
import { parseBootstrap, parseNode, MIN_TESTNET_NODES } from './swarm/bootstrap.mjs'

export class ConfigError extends Error {}

function int (env, name, def, { min = 0, max = Number.MAX_SAFE_INTEGER } = {}) {
  const raw = env[name]
  if (raw === undefined || raw === '') return def
  const n = Number(raw)
  if (!Number.isInteger(n) || n < min || n > max) {
    throw new ConfigError(`${name} must be an integer between ${min} and ${max}, got ${JSON.stringify(raw)}`)
  }
  return n
}

/** Read the bridge configuration from the environment; bad values fail here, at start. */
export function loadBridgeConfig (env = process.env, cwd = process.cwd()) {
  let bootstrap
  try {
    bootstrap = parseBootstrap(env.HYPERTUNA_SWARM_BOOTSTRAP)
  } catch (err) {
    throw new ConfigError(`HYPERTUNA_SWARM_BOOTSTRAP: ${err.message}`)
  }

  const socketRaw = env.HYPERTUNA_BRIDGE_SOCKET
  const socketPath = socketRaw === 'off' ? null : path.resolve(cwd, socketRaw || './var/bridge.sock')

  let tcp = null
  if (env.HYPERTUNA_BRIDGE_TCP) {
    try {
      tcp = parseNode(env.HYPERTUNA_BRIDGE_TCP)
    } catch (err) {
      throw new ConfigError(`HYPERTUNA_BRIDGE_TCP: ${err.message}`)
    }
    if (!['127.0.0.1', '::1', 'localhost'].includes(tcp.host)) {
      throw new ConfigError('HYPERTUNA_BRIDGE_TCP must be a loopback address (127.0.0.1:PORT)')
    }
    if (!env.HYPERTUNA_BRIDGE_SECRET) {
      throw new ConfigError('HYPERTUNA_BRIDGE_TCP needs HYPERTUNA_BRIDGE_SECRET')
    }
  }
  if (!socketPath && !tcp) throw new ConfigError('no RPC transport: set HYPERTUNA_BRIDGE_SOCKET or HYPERTUNA_BRIDGE_TCP')

  const seed = env.HYPERTUNA_SWARM_SEED || null
  if (seed && !/^[0-9a-fA-F]{64}$/.test(seed)) {
    throw new ConfigError('HYPERTUNA_SWARM_SEED must be 64 hex characters')
  }

  let publicUrl = null
  if (env.HYPERTUNA_PUBLIC_URL) {
    try {
      publicUrl = new URL(env.HYPERTUNA_PUBLIC_URL)
    } catch {
      throw new ConfigError('HYPERTUNA_PUBLIC_URL must be an absolute URL')
    }
  }

  const blindRaw = (env.HYPERTUNA_BRIDGE_BLIND_PEER || 'on').toLowerCase()
  if (!['on', 'off', '1', '0', 'true', 'false'].includes(blindRaw)) {
    throw new ConfigError('HYPERTUNA_BRIDGE_BLIND_PEER must be on or off')
  }

  return {
    bootstrap,
    blindPeer: {
      enabled: ['on', '1', 'true'].includes(blindRaw),
      maxBytes: int(env, 'HYPERTUNA_BRIDGE_BLIND_PEER_MAX_BYTES', 100_000_000_000, { min: 1_000_000 }),
      staleMs: int(env, 'HYPERTUNA_BRIDGE_BLIND_PEER_STALE_MS', 7 * 24 * 3600_000, { min: 0 }),
      trustWaitMs: int(env, 'HYPERTUNA_BRIDGE_BLIND_PEER_TRUST_WAIT_MS', 30_000, { min: 0, max: 600_000 }),
      cacheSize: int(env, 'HYPERTUNA_BRIDGE_REPLICA_CACHE', 32, { min: 1, max: 4096 }),
      progressIntervalMs: int(env, 'HYPERTUNA_BRIDGE_MIRROR_PROGRESS_MS', 1000, { min: 100 }),
      announceIntervalMs: int(env, 'HYPERTUNA_BRIDGE_MIRROR_ANNOUNCE_MS', 10_000, { min: 100 }),
      trustRegistered: !['off', '0', 'false'].includes((env.HYPERTUNA_BRIDGE_BLIND_PEER_TRUST_REGISTERED || 'on').toLowerCase())
    },
    publicUrl: publicUrl ? publicUrl.href.replace(/\/$/, '') : null,
    gatewayOrigin: publicUrl ? publicUrl.origin : null,
    gatewayId: env.HYPERTUNA_GATEWAY_ID || null,
    swarmHost: env.HYPERTUNA_SWARM_HOST || null,
    testnetNodes: int(env, 'HYPERTUNA_SWARM_TESTNET_NODES', MIN_TESTNET_NODES, { min: MIN_TESTNET_NODES, max: 64 }),
    bootstrapFile: path.resolve(cwd, env.HYPERTUNA_SWARM_BOOTSTRAP_FILE || './var/swarm.json'),
    storageDir: path.resolve(cwd, env.HYPERTUNA_BRIDGE_STORAGE || './var/bridge'),
    seed,
    socketPath,
    tcp,
    secret: env.HYPERTUNA_BRIDGE_SECRET || null,
    leaseOpenTimeoutMs: int(env, 'HYPERTUNA_BRIDGE_LEASE_OPEN_TIMEOUT_MS', 60_000, { min: 1000 }),
    registerTimeoutMs: int(env, 'HYPERTUNA_BRIDGE_REGISTER_TIMEOUT_MS', 10_000, { min: 100 }),
    pool: {
      connectTimeoutMs: int(env, 'HYPERTUNA_BRIDGE_CONNECT_TIMEOUT_MS', 15_000, { min: 100 }),
      handshakeTimeoutMs: int(env, 'HYPERTUNA_BRIDGE_HANDSHAKE_TIMEOUT_MS', 15_000, { min: 100 }),
      firstDataTimeoutMs: int(env, 'HYPERTUNA_BRIDGE_FIRST_DATA_TIMEOUT_MS', 3_000, { min: 100 }),
      identifyTimeoutMs: int(env, 'HYPERTUNA_BRIDGE_IDENTIFY_TIMEOUT_MS', 30_000, { min: 100 }),
      requestTimeoutMs: int(env, 'HYPERTUNA_BRIDGE_REQUEST_TIMEOUT_MS', 30_000, { min: 100 }),
      healthIntervalMs: int(env, 'HYPERTUNA_BRIDGE_HEALTH_INTERVAL_MS', 30_000, { min: 0 }),
      healthTimeoutMs: int(env, 'HYPERTUNA_BRIDGE_HEALTH_TIMEOUT_MS', 5_000, { min: 100 }),
      overdueProbeMs: int(env, 'HYPERTUNA_BRIDGE_OVERDUE_PROBE_MS', 1_000, { min: 0 }),
      overdueProbeTimeoutMs: int(env, 'HYPERTUNA_BRIDGE_OVERDUE_PROBE_TIMEOUT_MS', 2_000, { min: 100 }),
      reconnectBaseMs: int(env, 'HYPERTUNA_BRIDGE_RECONNECT_BASE_MS', 1_000, { min: 10 }),
      reconnectMaxMs: int(env, 'HYPERTUNA_BRIDGE_RECONNECT_MAX_MS', 30_000, { min: 10 })
    }
  }
}
