#!/usr/bin/env node
import fs from 'node:fs'
import path from 'node:path'
import { parseArgs } from 'node:util'
import { ReferenceWorker } from './worker.mjs'
import { parseBootstrap } from '../swarm/bootstrap.mjs'
import { hexFromNpubOrHex } from './nostr.mjs'
import { createLogger, errorMessage } from '../lib/log.mjs'

const HELP = `Usage: node src/worker/main.mjs [options]

Reference Hypertuna worker: hosts one relay and serves the worker protocol on a Hyperswarm.

  --bootstrap LIST         host:port[,host:port] DHT bootstrap, or 'public'   [HYPERTUNA_SWARM_BOOTSTRAP]
  --bootstrap-file FILE    JSON written by the bridge (bootstrap + gatewayPublicKey)
                                                         [HYPERTUNA_SWARM_BOOTSTRAP_FILE]
  --bootstrap-wait-ms MS   wait this long for --bootstrap-file to appear (default 30000)
  --gateway-url URL        gateway base URL for HTTP registration [HYPERTUNA_WORKER_GATEWAY_URL]
  --secret SECRET          registration shared secret             [HYPERTUNA_WORKER_SECRET]
  --gateway-peer-key HEX   gateway swarm key (default: from --bootstrap-file) [HYPERTUNA_WORKER_GATEWAY_PEER_KEY]
  --storage DIR            storage directory (default ./var/worker) [HYPERTUNA_WORKER_STORAGE]
  --name NAME              relay name (default demo)               [HYPERTUNA_WORKER_RELAY_NAME]
  --owner NPUB|HEX         owner Nostr pubkey (default: a key generated and kept in storage)
  --requires-auth          require gateway-forwarded auth tokens for REQ/EVENT
  --protocol NAME          hyperpipe-relay-v2 (default) or hypertuna-relay-v2
  --register-interval-ms   re-registration interval (default 60000)
  --telemetry-interval-ms  telemetry interval (default 15000)
  --drive-import DIR       import the files of DIR into the relay drive at start
  --no-ws-push             never push (poll-only, like real workers): a REQ's stored events and
                           EOSE, and live events, wait for GET /get/relay; no 'wsframe-push' in
                           the handshake
  --subscription-notices   answer a REQ with ["NOTICE","Subscription <id> created/updated
                           successfully"] and a CLOSE with ["NOTICE","Subscription closed"], as
                           real workers do
  --relay-cores            put relayCores [{key (z-base-32), role}] and relayCoresMode "merge" in
                           the signed HTTP registration, as real workers do
  --no-metadata-post       never POST /api/blind-peer/metadata (real workers do not)
  --separate-blind-peer-key  the blind-peering client dials with a key pair of its own (kept in
                           <storage>/blind-peering-seed), announced as blindPeeringPublicKey
                           (z-base-32) in the HTTP and swarm registrations; needs --blind-peer
  --real-worker-mode       all of the above: --no-ws-push --subscription-notices --relay-cores
                           --no-metadata-post --separate-blind-peer-key
  --issue-token            after registering, issue a client token and print it
  --token-pubkey HEX       pubkey for --issue-token (default: owner)
  --status-file FILE       where to write status JSON (default <storage>/status.json)
  --blind-peer KEY|gateway mirror the relay cores to this blind peer (64 hex), or to the one the
                           gateway advertises in its handshake    [HYPERTUNA_WORKER_BLIND_PEER]
  --allow-join             accept POST /relay/join from other hosts (adds them as writers)
  --join RELAYKEY          host an existing relay (replicated from --join-peer) instead of a new one
  --join-peer HEX          swarm key of a worker hosting that relay (started with --allow-join)
  --gateway-writer-out F   create a dedicated gateway writer (non-indexer) and write its key pair
                           to F (0600); it is what a worker would deposit with the escrow
  --gateway-writer         create a dedicated gateway writer without writing it out (its secret is
                           kept in memory for the escrow only; a new writer on every start)
  --escrow-url URL         deposit the gateway writer with this escrow (https) and send heartbeats
                                                         [HYPERTUNA_WORKER_ESCROW_URL]
  --escrow-ca FILE         the escrow's private CA (PEM)        [HYPERTUNA_WORKER_ESCROW_CA]
  --escrow-cert FILE       worker client certificate (PEM)      [HYPERTUNA_WORKER_ESCROW_CERT]
  --escrow-key FILE        its private key (PEM)                [HYPERTUNA_WORKER_ESCROW_KEY]
  --escrow-signing-key F   the worker's Ed25519 seed (hex) that signs deposits and heartbeats;
                           generated once (0600) if absent (default <storage>/escrow-signing-key)
                                                         [HYPERTUNA_WORKER_ESCROW_SIGNING_KEY]
  --escrow-verify-key HEX  pin the escrow's policy verify key   [HYPERTUNA_WORKER_ESCROW_VERIFY_KEY]
  --escrow-heartbeat-ms MS heartbeat interval (default 30000)   [HYPERTUNA_WORKER_ESCROW_HEARTBEAT_MS]
  --wakeup-interval-ms MS  how often to look for other writers' new blocks (default 5000)
  --memory-store           for benchmarks only: keep the relay's events in memory (lost on exit)
                           instead of the Autobase, and check an event's id but not its signature
                           (the gateway verifies it before forwarding), so EVENT is answered at
                           once and the worker is not what a benchmark measures; the wire
                           protocol, registration and push are unchanged. Not with --blind-peer,
                           --relay-cores (or --real-worker-mode), --allow-join, --join,
                           --gateway-writer(-out) or --escrow-url, which need the Autobase
  --help
`

function fail (msg) {
  process.stderr.write(`reference-worker: ${msg}\n`)
  process.exit(2)
}

function processAlive (pid) {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return err.code === 'EPERM'
  }
}

/**
 * Wait for the bridge's published swarm file. A file left behind by a bridge that died names a
 * testnet that no longer exists, so one whose pid is gone counts as not there yet.
 */
async function readBootstrapFile (file, waitMs) {
  const deadline = Date.now() + waitMs
  let problem = 'missing'
  for (;;) {
    try {
      const info = JSON.parse(fs.readFileSync(file, 'utf8'))
      if (!Array.isArray(info.bootstrap) || info.bootstrap.length === 0) problem = 'no bootstrap list'
      else if (info.pid && !processAlive(info.pid)) problem = `stale (pid ${info.pid} is gone)`
      else return info
    } catch (err) {
      problem = err.message
    }
    if (Date.now() > deadline) fail(`cannot use bootstrap file ${file}: ${problem}`)
    await new Promise((resolve) => setTimeout(resolve, 200))
  }
}

async function main () {
  const { values } = parseArgs({
    options: {
      bootstrap: { type: 'string' },
      'bootstrap-file': { type: 'string' },
      'bootstrap-wait-ms': { type: 'string' },
      'gateway-url': { type: 'string' },
      secret: { type: 'string' },
      'gateway-peer-key': { type: 'string' },
      storage: { type: 'string' },
      name: { type: 'string' },
      owner: { type: 'string' },
      'requires-auth': { type: 'boolean' },
      protocol: { type: 'string' },
      'register-interval-ms': { type: 'string' },
      'telemetry-interval-ms': { type: 'string' },
      'drive-import': { type: 'string' },
      'no-ws-push': { type: 'boolean' },
      'subscription-notices': { type: 'boolean' },
      'relay-cores': { type: 'boolean' },
      'no-metadata-post': { type: 'boolean' },
      'separate-blind-peer-key': { type: 'boolean' },
      'real-worker-mode': { type: 'boolean' },
      'issue-token': { type: 'boolean' },
      'token-pubkey': { type: 'string' },
      'status-file': { type: 'string' },
      'blind-peer': { type: 'string' },
      'allow-join': { type: 'boolean' },
      join: { type: 'string' },
      'join-peer': { type: 'string' },
      'gateway-writer-out': { type: 'string' },
      'gateway-writer': { type: 'boolean' },
      'escrow-url': { type: 'string' },
      'escrow-ca': { type: 'string' },
      'escrow-cert': { type: 'string' },
      'escrow-key': { type: 'string' },
      'escrow-signing-key': { type: 'string' },
      'escrow-verify-key': { type: 'string' },
      'escrow-heartbeat-ms': { type: 'string' },
      'wakeup-interval-ms': { type: 'string' },
      'memory-store': { type: 'boolean' },
      help: { type: 'boolean' }
    }
  })
  if (values.help) {
    process.stdout.write(HELP)
    return
  }
  const env = process.env
  const num = (v, def, name) => {
    if (v === undefined) return def
    const n = Number(v)
    if (!Number.isInteger(n) || n < 0) fail(`${name} must be a non-negative integer`)
    return n
  }

  let bootstrap = null
  let gatewayPeerKey = values['gateway-peer-key'] || env.HYPERTUNA_WORKER_GATEWAY_PEER_KEY || null
  const bootstrapFile = values['bootstrap-file'] || (values.bootstrap ? null : env.HYPERTUNA_SWARM_BOOTSTRAP_FILE)
  if (bootstrapFile) {
    const info = await readBootstrapFile(path.resolve(bootstrapFile), num(values['bootstrap-wait-ms'], 30_000, '--bootstrap-wait-ms'))
    bootstrap = parseBootstrap(info.bootstrap.join(',')).nodes
    if (!gatewayPeerKey && info.gatewayPublicKey) gatewayPeerKey = info.gatewayPublicKey
  } else {
    const raw = values.bootstrap || env.HYPERTUNA_SWARM_BOOTSTRAP
    if (!raw || raw === 'local') fail('give --bootstrap host:port[,...] or --bootstrap-file (the worker never starts its own DHT)')
    try {
      bootstrap = parseBootstrap(raw).nodes
    } catch (err) {
      fail(err.message)
    }
  }
  if (gatewayPeerKey && !/^[0-9a-f]{64}$/.test(gatewayPeerKey)) fail('--gateway-peer-key must be 64 lowercase hex')

  const blindPeer = values['blind-peer'] || env.HYPERTUNA_WORKER_BLIND_PEER || null
  if (blindPeer && blindPeer !== 'gateway' && !/^[0-9a-f]{64}$/.test(blindPeer)) fail('--blind-peer must be 64 lowercase hex or "gateway"')
  if (values.join && !/^[0-9a-f]{64}$/.test(values.join)) fail('--join must be a 64 hex relay key')
  if (values.join && !(values['join-peer'] && /^[0-9a-f]{64}$/.test(values['join-peer']))) fail('--join needs --join-peer <64 hex swarm key>')

  const gatewayUrl = values['gateway-url'] || env.HYPERTUNA_WORKER_GATEWAY_URL || null
  const secret = values.secret || env.HYPERTUNA_WORKER_SECRET || null
  if (values['issue-token'] && !(gatewayUrl && secret)) fail('--issue-token needs --gateway-url and --secret')

  let escrow = null
  const escrowUrl = values['escrow-url'] || env.HYPERTUNA_WORKER_ESCROW_URL || null
  if (escrowUrl) {
    const pick = (flag, name) => values[flag] || env[name] || null
    escrow = {
      url: escrowUrl,
      ca: pick('escrow-ca', 'HYPERTUNA_WORKER_ESCROW_CA'),
      cert: pick('escrow-cert', 'HYPERTUNA_WORKER_ESCROW_CERT'),
      key: pick('escrow-key', 'HYPERTUNA_WORKER_ESCROW_KEY'),
      signingKeyFile: pick('escrow-signing-key', 'HYPERTUNA_WORKER_ESCROW_SIGNING_KEY'),
      verifyKey: pick('escrow-verify-key', 'HYPERTUNA_WORKER_ESCROW_VERIFY_KEY'),
      heartbeatMs: num(values['escrow-heartbeat-ms'] ?? env.HYPERTUNA_WORKER_ESCROW_HEARTBEAT_MS, 30_000, '--escrow-heartbeat-ms')
    }
    if (!/^https:\/\/[^/]/.test(escrowUrl)) fail('--escrow-url must be https://host[:port]')
    if (!(escrow.ca && escrow.cert && escrow.key)) fail('--escrow-url needs --escrow-ca, --escrow-cert and --escrow-key')
    for (const k of ['ca', 'cert', 'key']) {
      escrow[k] = path.resolve(escrow[k])
      if (!fs.existsSync(escrow[k])) fail(`--escrow-${k} ${escrow[k]} does not exist`)
    }
    if (escrow.signingKeyFile) escrow.signingKeyFile = path.resolve(escrow.signingKeyFile)
    if (escrow.verifyKey && !/^[0-9a-f]{64}$/.test(escrow.verifyKey)) fail('--escrow-verify-key must be 64 lowercase hex')
    if (escrow.heartbeatMs < 1) fail('--escrow-heartbeat-ms must be positive')
    if (!(values['gateway-writer-out'] || values['gateway-writer'])) fail('--escrow-url needs --gateway-writer or --gateway-writer-out')
  }

  const real = !!values['real-worker-mode']
  if (values['separate-blind-peer-key'] && !blindPeer) fail('--separate-blind-peer-key needs --blind-peer')
  const memoryStore = !!values['memory-store']

  let ownerHex = null
  if (values.owner) {
    try {
      ownerHex = hexFromNpubOrHex(values.owner)
    } catch (err) {
      fail(err.message)
    }
  }

  const log = createLogger('worker')
  // Options that cannot go together (--memory-store with an Autobase feature) are refused like a bad flag.
  let worker
  try {
    worker = new ReferenceWorker({
      bootstrap,
      storageDir: values.storage || env.HYPERTUNA_WORKER_STORAGE || './var/worker',
      name: values.name || env.HYPERTUNA_WORKER_RELAY_NAME || 'demo',
      ownerHex,
      gatewayUrl,
      secret,
      gatewayPeerKey,
      requiresAuth: !!values['requires-auth'],
      protocol: values.protocol || 'hyperpipe-relay-v2',
      registerIntervalMs: num(values['register-interval-ms'], 60_000, '--register-interval-ms'),
      telemetryIntervalMs: num(values['telemetry-interval-ms'], 15_000, '--telemetry-interval-ms'),
      driveImport: values['drive-import'] || null,
      wsPush: !(real || values['no-ws-push']),
      subscriptionNotices: real || !!values['subscription-notices'],
      relayCores: real || !!values['relay-cores'],
      metadataPost: !(real || values['no-metadata-post']),
      separateBlindPeerKey: real || !!values['separate-blind-peer-key'],
      statusFile: values['status-file'] || null,
      blindPeer,
      allowJoin: !!values['allow-join'],
      join: values.join || null,
      joinPeer: values['join-peer'] || null,
      gatewayWriterOut: values['gateway-writer-out'] ? path.resolve(values['gateway-writer-out']) : null,
      gatewayWriter: !!values['gateway-writer'],
      escrow,
      wakeupIntervalMs: num(values['wakeup-interval-ms'], 5000, '--wakeup-interval-ms'),
      memoryStore,
      verifySignatures: !memoryStore,
      logger: log
    })
  } catch (err) {
    fail(err.message)
  }

  let stopping = false
  const stop = async (signal) => {
    if (stopping) return
    stopping = true
    log.info('stopping', { signal })
    const force = setTimeout(() => process.exit(1), 10_000)
    force.unref()
    await worker.stop().catch(() => {})
    process.exit(0)
  }
  process.on('SIGINT', () => stop('SIGINT'))
  process.on('SIGTERM', () => stop('SIGTERM'))
  // A supervisor or test that dies closes our stdin; with this set the worker stops with it.
  if (env.HYPERTUNA_WORKER_EXIT_ON_STDIN_CLOSE === '1') {
    process.stdin.on('end', () => stop('stdin-closed'))
    process.stdin.resume()
  }

  worker.on('joined', (state) => {
    process.stdout.write('HYPERTUNA_WORKER_JOINED ' + JSON.stringify({ relayKey: worker.relayKey, ...state }) + '\n')
  })
  // One line per accepted deposit (the first, and again after a rotation): ids and public keys only.
  worker.on('escrow', (state) => {
    const { relayKey, depositId, writerPublicKey, writerKey, workerKey, policyVersion, expiresAt } = state
    process.stdout.write('HYPERTUNA_WORKER_ESCROW ' + JSON.stringify({ relayKey, depositId, writerPublicKey, writerKey, workerKey, policyVersion, expiresAt }) + '\n')
  })
  const status = await worker.start()
  log.info('ready', { relayKey: status.relayKey, swarmPublicKey: status.swarmPublicKey, identifier: status.identifier })
  process.stdout.write('HYPERTUNA_WORKER_READY ' + JSON.stringify(status) + '\n')

  if (values['issue-token']) {
    try {
      // The gateway issues tokens only for registered relays; registration retries until it works.
      await worker.waitRegistered()
      const issued = await worker.issueClientToken({ pubkey: values['token-pubkey'] || undefined })
      process.stdout.write('HYPERTUNA_WORKER_TOKEN ' + JSON.stringify(issued) + '\n')
    } catch (err) {
      log.error('token issue failed', { error: errorMessage(err) })
    }
  }
}

main().catch((err) => {
  process.stderr.write(`reference-worker: fatal: ${err && err.stack ? err.stack : err}\n`)
  process.exit(1)
})
