// Runs the published Hyperpipe worker runtime (@squip/hyperpipe-core) as a worker of this gateway, for the
// interop suite. Start with `node --require ./guard.cjs worker.mjs` (see README.md).
//
// Real modules: relay-server.mjs (RelayProtocol server, RelayManager on Autobase + Hyperbee, the swarm
// `/gateway/register`), hyperdrive-manager.mjs, relay-gateway-map-store.mjs, blind-peering-manager.mjs and
// gateway/PublicGatewayRegistrar.mjs. What the desktop host's GatewayService would do, this file does in
// its place, with the same payloads: keep a gateway route for the relay, mirror it through the blind-peering
// manager, and register it over HTTP with `{peers, metadata, relayCores, relayCoresMode: 'merge'}`.
//
// Configuration: one JSON object in HYPERTUNA_INTEROP_CONFIG:
//   {storage, gatewayUrl, secret, gatewayPublicKey, blindPeerPublicKey, name, registerIntervalMs,
//    nostrSecretKey?, registerAs: 'hex'|'identifier', mirror: true|false}
// Output (stdout, one JSON object after each marker):
//   HYPERTUNA_INTEROP_READY {relayKey, publicIdentifier, swarmPublicKey, blindPeeringPublicKey, pubkey, authToken}
//   HYPERTUNA_INTEROP_REGISTERED {status, relayKey, relayCores}           after each HTTP registration
//   HYPERTUNA_INTEROP_RESULT {id, ok, result|error}                        answer to a stdin command
// Commands (stdin, one JSON object per line): {id, cmd: 'issue-token'|'refresh-token'|'revoke-token'|
//   'register'|'unregister'|'status'|'stop', …params}.

import { createInterface } from 'node:readline'
import crypto from 'node:crypto'
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { schnorr } from '@noble/curves/secp256k1.js'
import HypercoreId from 'hypercore-id-encoding'
// The runtime's package exports only its protocol helpers; its modules are loaded by path, as its own
// binary does.
const CORE = new URL('./node_modules/@squip/hyperpipe-core/', import.meta.url)
const core = (file) => import(new URL(file, CORE).href)
const { installCoreLogger } = await core('logger.mjs')
const relayServer = await core('relay-server.mjs')
const { initializeHyperdrive, getCorestore } = await core('hyperdrive-manager.mjs')
const { activeRelays } = await core('hyperpipe-relay-manager-adapter.mjs')
const { configureRelayGatewayMapStore, upsertRelayGatewayRoute } = await core('relay-gateway-map-store.mjs')
const { default: BlindPeeringManager } = await core('blind-peering-manager.mjs')
const { default: PublicGatewayRegistrar } = await core('gateway/PublicGatewayRegistrar.mjs')

const cfg = JSON.parse(process.env.HYPERTUNA_INTEROP_CONFIG || '{}')
for (const key of ['storage', 'gatewayUrl', 'secret', 'gatewayPublicKey', 'name']) {
  if (!cfg[key]) {
    process.stderr.write(`worker: HYPERTUNA_INTEROP_CONFIG.${key} is required\n`)
    process.exit(2)
  }
}

function marker (name, data) {
  process.stdout.write(`${name} ${JSON.stringify(data)}\n`)
}

// The runtime's own logger setup (redaction, noise suppression), as its binary installs it; its output goes
// to stderr so stdout carries only markers.
installCoreLogger()
for (const level of ['log', 'info', 'debug']) console[level] = (...args) => console.error(...args)

// A restarted worker keeps its identity and its relay: both live in its storage, like the desktop host's.
const STATE_FILE = join(cfg.storage, 'interop-state.json')
await mkdir(cfg.storage, { recursive: true })
const saved = await readFile(STATE_FILE, 'utf8').then(JSON.parse, () => null)
const nostrSecret = saved?.nostrSecret || cfg.nostrSecretKey || crypto.randomBytes(32).toString('hex')
const nostrPubkey = Buffer.from(schnorr.getPublicKey(Buffer.from(nostrSecret, 'hex'))).toString('hex')
const gatewayOrigin = new URL(cfg.gatewayUrl).origin
const gatewayHost = new URL(cfg.gatewayUrl).host

// The desktop host's IPC sink: relay-server reports through it; keep the last message of each type.
const hostMessages = new Map()
global.sendMessage = (message) => {
  if (message && typeof message.type === 'string') hostMessages.set(message.type, message)
}

const config = {
  storage: cfg.storage,
  userKey: nostrPubkey,
  nostr_pubkey_hex: nostrPubkey,
  nostr_nsec_hex: nostrSecret,
  proxy_seed: crypto.createHash('sha256').update(`hypertuna-interop-proxy:${nostrSecret}`).digest('hex'),
  gatewayUrl: gatewayOrigin,
  proxy_server_address: gatewayHost,
  proxy_websocket_protocol: 'ws',
  registerWithGateway: true,
  registerInterval: cfg.registerIntervalMs || 60000,
  gatewayPublicKey: cfg.gatewayPublicKey
}
global.userConfig = { userKey: nostrPubkey, storage: cfg.storage }

configureRelayGatewayMapStore({ storageBase: cfg.storage })
await initializeHyperdrive({ ...config })
await relayServer.initializeRelayServer(config)

// Blind peering exactly as the desktop host starts it: its own swarm on the drive corestore, the gateway's
// blind peer as the (handshake-learned) mirror, the swarm key pair handed over as runtime identity.
// Where the gateway's blind peer is: given, or asked of the gateway the way the runtime's relay server
// falls back to (`GET /api/blind-peer`, unauthenticated, `summary.publicKey` or `status.publicKey`).
async function discoverBlindPeer () {
  if (cfg.blindPeerPublicKey) return cfg.blindPeerPublicKey
  const response = await fetch(new URL('/api/blind-peer', gatewayOrigin), {
    headers: { accept: 'application/json', 'cache-control': 'no-store' }
  })
  if (!response.ok) throw new Error(`GET /api/blind-peer answered ${response.status}`)
  const body = await response.json()
  const key = body?.summary?.publicKey || body?.status?.publicKey
  if (typeof key !== 'string' || !key) throw new Error('GET /api/blind-peer carries no summary.publicKey')
  return key
}

let blindPeering = null
const blindPeerKey = cfg.mirror === false
  ? null
  : await discoverBlindPeer().catch((error) => {
    process.stderr.write(`worker: cannot find the gateway's blind peer: ${error.message}\n`)
    process.exit(3)
  })
if (blindPeerKey) {
  blindPeering = new BlindPeeringManager({
    logger: console,
    settingsProvider: () => ({ blindPeerEnabled: true, blindPeerKeys: [blindPeerKey] })
  })
  blindPeering.setMetadataPath(`${cfg.storage}/blind-peering-metadata.json`)
  global.blindPeeringManager = blindPeering
  const { default: hypercoreCrypto } = await import('hypercore-crypto')
  await blindPeering.start({
    corestore: getCorestore(),
    wakeup: null,
    swarmKeyPair: hypercoreCrypto.keyPair(Buffer.from(config.proxy_seed, 'hex'))
  })
}

let created
if (saved?.relayKey) {
  await relayServer.connectStoredRelays()
  created = { success: activeRelays.has(saved.relayKey), ...saved }
} else {
  created = await relayServer.createRelay({
    name: cfg.name,
    description: `interop relay ${cfg.name}`,
    isPublic: true,
    isOpen: false,
    fileSharing: true,
    gatewayOrigin,
    gatewayId: cfg.gatewayPublicKey
  })
}
if (!created?.success) {
  process.stderr.write(`worker: relay not available: ${created?.error || 'unknown error'}\n`)
  process.exit(3)
}
const relayKey = created.relayKey
const publicIdentifier = created.publicIdentifier
await writeFile(STATE_FILE, JSON.stringify({
  nostrSecret,
  relayKey,
  publicIdentifier,
  authToken: created.authToken || null
}), { mode: 0o600 })
await upsertRelayGatewayRoute({
  relayKey,
  publicIdentifier,
  gatewayOrigin,
  gatewayId: cfg.gatewayPublicKey,
  source: 'create-relay'
})
const relayManager = activeRelays.get(relayKey)

if (blindPeering && relayManager) {
  blindPeering.ensureRelayMirror({
    relayKey,
    publicIdentifier,
    autobase: relayManager.relay,
    corestore: relayManager.store || null,
    mirrorKeys: [blindPeerKey]
  })
}

function blindPeeringPublicKey () {
  return blindPeering?.getLocalBlindPeerPublicKey?.() || null
}

// GatewayService#collectRelayCoreMetadata: the relay's Autobase cores with their roles, z-base-32 keys.
function relayCores () {
  const base = relayManager?.relay
  if (!base) return []
  const seen = new Set()
  const cores = []
  const add = (candidate, role) => {
    const core = candidate?.core || candidate
    const key = core?.key
    if (!key || key.length !== 32) return
    const encoded = HypercoreId.encode(key)
    if (seen.has(encoded)) return
    seen.add(encoded)
    cores.push({ key: encoded, role })
  }
  add(base, 'autobase')
  add(base.system, 'autobase-system')
  add(base.system?.core, 'autobase-system-core')
  add(base.core, 'autobase-core')
  add(base.local, 'autobase-local')
  add(base.view, 'autobase-view')
  const writers = Array.isArray(base.activeWriters) ? base.activeWriters : [...(base.activeWriters || [])]
  writers.forEach((w, i) => add(w?.core || w, `autobase-writer-${i}`))
  return cores
}

const registrar = new PublicGatewayRegistrar({ baseUrl: gatewayOrigin, sharedSecret: cfg.secret, logger: console })

async function register () {
  const key = cfg.registerAs === 'identifier' ? publicIdentifier : relayKey
  const metadata = {
    identifier: publicIdentifier,
    publicIdentifier,
    name: cfg.name,
    description: `interop relay ${cfg.name}`,
    gatewayPath: publicIdentifier.replace(':', '/'),
    gatewayId: cfg.gatewayPublicKey,
    gatewayOrigin,
    requiresAuth: true,
    isPublic: true
  }
  const bpk = blindPeeringPublicKey()
  if (bpk) metadata.blindPeeringPublicKey = bpk
  const cores = relayCores()
  const payload = { peers: [config.swarmPublicKey], metadata }
  if (cores.length) {
    payload.relayCores = cores
    payload.relayCoresMode = 'merge'
  }
  const result = await registrar.registerRelay(key, payload)
  marker('HYPERTUNA_INTEROP_REGISTERED', {
    success: !!result?.success,
    status: result?.status ?? null,
    relayKey: key,
    relayCores: cores.length,
    blindPeeringPublicKey: bpk
  })
  return result
}

await register()
const registerTimer = setInterval(() => { register().catch(() => {}) }, config.registerInterval)

marker('HYPERTUNA_INTEROP_READY', {
  relayKey,
  publicIdentifier,
  gatewayPath: publicIdentifier.replace(':', '/'),
  swarmPublicKey: config.swarmPublicKey,
  blindPeeringPublicKey: blindPeeringPublicKey(),
  pubkey: nostrPubkey,
  authToken: created.authToken || null
})

// ---- control commands ----------------------------------------------------------------------------

async function run (command) {
  const key = command.relayKey || relayKey
  switch (command.cmd) {
    case 'issue-token':
      return registrar.issueGatewayToken(key, {
        relayAuthToken: command.relayAuthToken || created.authToken,
        pubkey: command.pubkey || nostrPubkey,
        scope: command.scope || 'relay-access',
        ...(command.ttlSeconds ? { ttlSeconds: command.ttlSeconds } : {})
      })
    case 'refresh-token':
      return registrar.refreshGatewayToken(key, { token: command.token, ...(command.ttlSeconds ? { ttlSeconds: command.ttlSeconds } : {}) })
    case 'revoke-token':
      return registrar.revokeGatewayToken(key, { ...(command.pubkey ? { pubkey: command.pubkey } : {}), reason: command.reason || 'interop' })
    case 'register':
      return register()
    case 'unregister':
      clearInterval(registerTimer)
      return { unregistered: await registrar.unregisterRelay(key) }
    case 'status':
      return {
        relayCores: relayCores(),
        blindPeering: blindPeering?.getStatus?.() || null,
        hostMessages: [...hostMessages.keys()]
      }
    case 'stop':
      setImmediate(shutdown)
      return { stopping: true }
    default:
      throw new Error(`unknown command ${command.cmd}`)
  }
}

const rl = createInterface({ input: process.stdin })
rl.on('line', (line) => {
  let command
  try {
    command = JSON.parse(line)
  } catch {
    marker('HYPERTUNA_INTEROP_RESULT', { id: null, ok: false, error: 'not JSON' })
    return
  }
  run(command).then(
    (result) => marker('HYPERTUNA_INTEROP_RESULT', { id: command.id ?? null, ok: true, result: result ?? null }),
    (error) => marker('HYPERTUNA_INTEROP_RESULT', { id: command.id ?? null, ok: false, error: String(error?.message || error) })
  )
})
// Like the reference worker: a closed stdin (the test runner went away) stops the worker.
rl.on('close', () => shutdown())

let stopping = false
async function shutdown () {
  if (stopping) return
  stopping = true
  clearInterval(registerTimer)
  const force = setTimeout(() => process.exit(0), 5000)
  force.unref()
  try { await blindPeering?.stop?.() } catch {}
  try { await relayServer.shutdownRelayServer() } catch {}
  process.exit(0)
}
process.on('SIGTERM', shutdown)
process.on('SIGINT', shutdown)
