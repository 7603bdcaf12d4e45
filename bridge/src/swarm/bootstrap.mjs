import HyperDHT from 'hyperdht'
import Hyperswarm from 'hyperswarm'
import createTestnet from 'hyperdht/testnet.js'

export const LOOPBACK = '127.0.0.1'
const DEFAULT_MODULES = { HyperDHT, Hyperswarm }
export const MIN_TESTNET_NODES = 4

/**
 * Parse a bootstrap setting.
 *   'local' (or empty)        -> { mode: 'local' }: the caller starts a loopback testnet
 *   'host:port,host:port'      -> { mode: 'list', nodes }
 *   'public'                   -> { mode: 'public', nodes: the public DHT bootstrap }
 * 'public' exists only for operators; nothing in this package selects it on its own.
 */
export function parseBootstrap (value) {
  const text = (value ?? '').trim()
  if (text === '' || text === 'local') return { mode: 'local', nodes: [] }
  if (text === 'public') return { mode: 'public', nodes: [...HyperDHT.BOOTSTRAP] }
  const nodes = text.split(',').map((s) => s.trim()).filter(Boolean).map(parseNode)
  if (nodes.length === 0) throw new Error(`invalid bootstrap list: ${JSON.stringify(value)}`)
  return { mode: 'list', nodes }
}

export function parseNode (entry) {
  if (typeof entry === 'object' && entry && entry.host && entry.port) {
    return { host: String(entry.host), port: Number(entry.port) }
  }
  const s = String(entry)
  const idx = s.lastIndexOf(':')
  if (idx <= 0) throw new Error(`invalid bootstrap node ${JSON.stringify(s)} (want host:port)`)
  const host = s.slice(0, idx)
  const port = Number(s.slice(idx + 1))
  if (!Number.isInteger(port) || port <= 0 || port > 65535) {
    throw new Error(`invalid bootstrap port in ${JSON.stringify(s)}`)
  }
  return { host, port }
}

export function formatNodes (nodes) {
  return nodes.map((n) => (typeof n === 'string' ? n : `${n.host}:${n.port}`))
}

export function isLoopbackHost (host) {
  return host === 'localhost' || /^127\.\d+\.\d+\.\d+$/.test(host) || host === '::1'
}

/**
 * Which local address the DHT binds. Loopback unless the operator chose the public DHT or
 * named a host explicitly: a bootstrap list of loopback nodes must never make this node
 * bind a routable interface.
 */
export function bindHostFor (bootstrap, explicitHost) {
  if (explicitHost) return explicitHost
  if (bootstrap.mode === 'public') return '0.0.0.0'
  return LOOPBACK
}

/**
 * Start an in-process HyperDHT testnet on loopback. At least four nodes: with three, the
 * testnet's first node never gets a valid id, fresh nodes see only two routing-table
 * entries, the NAT sampler never reaches a verdict and the first cross-process connection
 * stalls for ~13 s while the client holds a stream the server already destroyed.
 */
export async function startLocalTestnet (size = MIN_TESTNET_NODES) {
  const n = Math.max(MIN_TESTNET_NODES, Number(size) || MIN_TESTNET_NODES)
  const testnet = await createTestnet(n, { host: LOOPBACK })
  return testnet
}

/**
 * Build a DHT. `bootstrap` must be an explicit, non-empty node list: passing nothing would
 * make the library fall back to the public bootstrap, which this package never does by
 * accident.
 */
export function createDht ({ bootstrap, host, keyPair, port, modules = null }) {
  if (!Array.isArray(bootstrap) || bootstrap.length === 0) {
    throw new Error('createDht requires an explicit, non-empty bootstrap list')
  }
  if (!host) throw new Error('createDht requires an explicit bind host')
  const opts = { bootstrap, host, keyPair }
  if (port) opts.port = port
  // `modules` lets the blind peer build its DHT from its own install tree (see blind/), so the
  // streams it replicates on come from the same module copies as its corestore; the same
  // explicit bootstrap and bind host apply either way.
  const { HyperDHT } = modules || DEFAULT_MODULES
  return new HyperDHT({ bootstrap: opts.bootstrap, host: opts.host, keyPair: opts.keyPair, port: opts.port })
}

/** A Hyperswarm over an explicitly configured DHT (never the library's default DHT). */
export function createSwarm ({ bootstrap, host, keyPair, maxPeers = 64, firewall, modules = null }) {
  const dht = createDht({ bootstrap, host, keyPair, modules })
  const { Hyperswarm } = modules || DEFAULT_MODULES
  return new Hyperswarm({ dht: dht, keyPair, maxPeers, firewall })
}
