import { EventEmitter } from 'node:events'
import fs from 'node:fs'
import path from 'node:path'
import { randomBytes } from 'node:crypto'
import Corestore from 'corestore'
import HyperDHT from 'hyperdht'
import b4a from 'b4a'
import { RelayChannel, RELAY_PROTOCOL, LEGACY_RELAY_PROTOCOL, baseHandshake } from '../protocol/relay-protocol.mjs'
import { createSwarm } from '../swarm/bootstrap.mjs'
import { writeFileAtomic, readJsonIfExists } from '../lib/files.mjs'
import { createLogger, errorMessage } from '../lib/log.mjs'
import { RelayStore } from './relay-store.mjs'
import { MemoryRelayStore } from './memory-store.mjs'
import { RelayDrive } from './drive.mjs'
import { Registrar } from './registrar.mjs'
import { RelayMirror } from './mirror.mjs'
import { wipe } from './escrow-client.mjs'
import { npubFromHex, randomSecretKeyHex, getPublicKeyHex } from './nostr.mjs'
import { z32Key } from './relay-cores.mjs'
import { WorkerFrames } from './frames.mjs'
import { WorkerGatewayWriter } from './gateway-writer.mjs'
import { WorkerJoin } from './join.mjs'
import { WorkerRegistration } from './registration.mjs'
import { WorkerRoutes } from './routes.mjs'
import { WorkerPendingWrites } from './pending-writes.mjs'

export const WORKER_CAPABILITIES = ['http', 'websocket', 'health', 'telemetry', 'wsframe-push']
/** What real workers advertise: no ws-frame push. */
export const POLL_ONLY_CAPABILITIES = WORKER_CAPABILITIES.filter((c) => c !== 'wsframe-push')
const TOPIC_NAMES = {
  [RELAY_PROTOCOL]: 'hyperpipe-relay-network',
  [LEGACY_RELAY_PROTOCOL]: 'hypertuna-relay-network'
}

export function camelCase (name) {
  const words = String(name).trim().split(/[^a-zA-Z0-9]+/).filter(Boolean)
  if (words.length === 0) return 'relay'
  return words.map((w, i) => (i === 0 ? w.toLowerCase() : w[0].toUpperCase() + w.slice(1).toLowerCase())).join('')
}

function persistSecretHex (file) {
  try {
    const hex = fs.readFileSync(file, 'utf8').trim()
    if (/^[0-9a-f]{64}$/.test(hex)) return hex
  } catch (err) {
    if (err.code !== 'ENOENT') throw err
  }
  const hex = randomBytes(32).toString('hex')
  fs.writeFileSync(file, hex + '\n', { mode: 0o600 })
  return hex
}

/**
 * Reference worker: hosts one Nostr relay (Autobase 6.5.13 + Hyperbee view in the worker
 * layout), serves the worker protocol to gateways, registers over HTTP and Hyperswarm.
 * It stands in for real workers in demos and end-to-end tests, on a loopback testnet.
 */
export class ReferenceWorker extends EventEmitter {
  constructor (opts) {
    super()
    this.opts = {
      name: 'demo',
      protocol: RELAY_PROTOCOL,
      registerIntervalMs: 60_000,
      telemetryIntervalMs: 15_000,
      connectionIdleMs: 10 * 60_000,
      maxQueuedFrames: 1000,
      requiresAuth: false,
      wsPush: true,
      subscriptionNotices: false,
      relayCores: false,
      metadataPost: true,
      separateBlindPeerKey: false,
      blindPeer: null,
      allowJoin: false,
      join: null,
      joinPeer: null,
      gatewayWriterOut: null,
      gatewayWriter: false,
      escrow: null,
      wakeupIntervalMs: 5000,
      memoryStore: false,
      verifySignatures: true,
      ...opts
    }
    if (!Array.isArray(this.opts.bootstrap) || this.opts.bootstrap.length === 0) {
      throw new Error('worker needs an explicit bootstrap list')
    }
    if (![RELAY_PROTOCOL, LEGACY_RELAY_PROTOCOL].includes(this.opts.protocol)) {
      throw new Error(`unknown protocol ${this.opts.protocol}`)
    }
    this.log = this.opts.logger || createLogger('worker')
    this.storageDir = path.resolve(this.opts.storageDir)
    this.connections = new Map()
    this.gateways = new Map()
    this.channels = new Set()
    this.authTokens = new Map()
    this.metrics = { totalRequests: 0, successfulRequests: 0, failedRequests: 0, lastMetricsReset: Date.now() }
    this.lastSwarmRegistration = null
    this.imported = []
    this.startedAt = null
    this.timers = []
    this.closing = false
    this.mirror = null
    this.mirrorSwarm = null
    this.blindPeeringKeyPair = null
    this.blindPeeringPublicKey = null
    this.joinState = null
    this.gatewayWriter = null
    this.escrowClient = null
    this.escrowState = null
    this._escrowQueue = Promise.resolve()
    this._escrowTimer = null
    this.router = this._buildRouter()
    if (this.opts.escrow) {
      const e = this.opts.escrow
      if (!e.transport && !(e.url && e.ca && e.cert && e.key)) throw new Error('the escrow needs url, ca, cert and key')
      if (!(this.opts.gatewayWriterOut || this.opts.gatewayWriter)) throw new Error('the escrow needs a gateway writer (gatewayWriterOut or gatewayWriter)')
    }
    if (this.opts.memoryStore) {
      const needsAutobase = ['relayCores', 'blindPeer', 'allowJoin', 'join', 'gatewayWriterOut', 'gatewayWriter', 'escrow']
      const clash = needsAutobase.filter((name) => this.opts[name])
      if (clash.length) throw new Error(`a memory-store relay has no Autobase for ${clash.join(', ')}`)
    }
  }

  /** Relay replication runs on swarm connections only for hosts that share a relay. */
  get replicates () {
    return !!(this.opts.allowJoin || this.opts.join)
  }

  async start () {
    fs.mkdirSync(this.storageDir, { recursive: true, mode: 0o700 })
    const relayMeta = readJsonIfExists(path.join(this.storageDir, 'relay.json'))

    this.ownerSecretKey = null
    if (this.opts.ownerHex) {
      this.ownerHex = this.opts.ownerHex
    } else {
      this.ownerSecretKey = persistSecretHex(path.join(this.storageDir, 'owner-secret-key'))
      this.ownerHex = getPublicKeyHex(this.ownerSecretKey)
    }
    this.npub = npubFromHex(this.ownerHex)
    this.slug = camelCase(this.opts.name)
    this.identifier = `${this.npub}:${this.slug}`
    this.gatewayPath = `${this.npub}/${this.slug}`

    if (this.opts.join && relayMeta && relayMeta.relayKey !== this.opts.join) {
      throw new Error(`storage ${this.storageDir} already hosts relay ${relayMeta.relayKey}`)
    }
    if (relayMeta && !!relayMeta.memoryStore !== !!this.opts.memoryStore) {
      throw new Error(`storage ${this.storageDir} hosts ${relayMeta.memoryStore ? 'a memory-store' : 'an Autobase'} relay`)
    }
    const bootstrapKey = relayMeta?.relayKey || this.opts.join || null
    this.store = new Corestore(path.join(this.storageDir, 'corestore'))
    await this.store.ready()
    // The memory store keeps the relay key across restarts, not its events.
    this.relay = this.opts.memoryStore
      ? new MemoryRelayStore({ key: bootstrapKey })
      : new RelayStore(this.store.namespace('relay'), { bootstrap: bootstrapKey ? b4a.from(bootstrapKey, 'hex') : null })
    await this.relay.ready()
    this.relayKey = this.relay.key
    if (!relayMeta) {
      const meta = { relayKey: this.relayKey, createdAt: Date.now() }
      if (this.opts.join) meta.joinedFrom = this.opts.joinPeer
      if (this.opts.memoryStore) meta.memoryStore = true
      writeFileAtomic(path.join(this.storageDir, 'relay.json'), JSON.stringify(meta) + '\n')
    }
    this.relay.on('event', (ev, info) => {
      // A superseded version or a deleted event is stored but shown to nobody, live included.
      if (!info || info.visible !== false) this._onLiveEvent(ev)
      if (this.mirror) this.mirror.onRelayChanged()
    })
    // A restarted host first looks for what other writers (a leased gateway writer, a failover
    // host) appended while it was away; see RelayStore.hintWakeupAll.
    await this.relay.hintWakeupAll()
    if (this.opts.gatewayWriterOut) this.gatewayWriter = await this._ensureGatewayWriter(this.opts.gatewayWriterOut)
    else if (this.opts.gatewayWriter) this.gatewayWriter = await this._createGatewayWriter()
    if (this.opts.escrow) this._openEscrowClient()

    this.drive = new RelayDrive(this.store)
    await this.drive.ready()
    if (this.opts.driveImport) {
      this.imported = await this.drive.importDirectory(this.identifier, this.opts.driveImport)
    }

    this._loadAuthTokens()

    const seed = b4a.from(persistSecretHex(path.join(this.storageDir, 'swarm-seed')), 'hex')
    const keyPair = HyperDHT.keyPair(seed)
    this.swarm = createSwarm({ bootstrap: this.opts.bootstrap, host: this.opts.swarmHost || '127.0.0.1', keyPair })
    this.swarmPublicKey = b4a.toString(keyPair.publicKey, 'hex')
    this.swarm.on('connection', (stream) => this._onConnection(stream))
    await this.swarm.dht.ready()
    await this.swarm.listen()
    const topic = HyperDHT.hash(Buffer.from(TOPIC_NAMES[this.opts.protocol], 'utf8'))
    await this.swarm.join(topic, { server: true, client: false }).flushed()
    if (this.opts.gatewayPeerKey) this.swarm.joinPeer(b4a.from(this.opts.gatewayPeerKey, 'hex'))
    if (this.opts.join && this.opts.joinPeer) this.swarm.joinPeer(b4a.from(this.opts.joinPeer, 'hex'))
    if (this.opts.blindPeer && this.opts.separateBlindPeerKey) {
      // As real workers do, the blind-peering client dials from a DHT node of its own whose key is
      // not the swarm key; that key (kept in storage) is announced as blindPeeringPublicKey.
      const bpSeed = b4a.from(persistSecretHex(path.join(this.storageDir, 'blind-peering-seed')), 'hex')
      this.blindPeeringKeyPair = HyperDHT.keyPair(bpSeed)
      this.blindPeeringPublicKey = z32Key(this.blindPeeringKeyPair.publicKey)
    }

    this.registrar = this.opts.gatewayUrl && this.opts.secret
      ? new Registrar({ gatewayUrl: this.opts.gatewayUrl, secret: this.opts.secret })
      : null

    this.startedAt = Date.now()
    if (this.opts.blindPeer && this.opts.blindPeer !== 'gateway') this._startMirror(this.opts.blindPeer)
    this._every(this.opts.telemetryIntervalMs, () => this._sendTelemetryAll())
    this._every(this.opts.registerIntervalMs, () => this._registerSwarmAll())
    this._every(this.opts.registerIntervalMs, () => this.mirror && this.mirror.sync().then(() => this.mirror && this.mirror.postMetadata()))
    this._every(this.opts.wakeupIntervalMs, () => this._wakeupOthers())
    this._every(60_000, () => this._gcConnections())
    if (this.registrar) this._scheduleRegistration((await this.registerHttp()).ok)
    if (this.escrowClient) this._escrowEnqueue(() => this._escrowDepositUntilAccepted())
    this.writeStatus()
    return this.status()
  }

  _every (ms, fn) {
    if (!ms || ms <= 0) return
    const t = setInterval(() => {
      Promise.resolve().then(fn).catch((err) => this.log.warn('periodic task failed', { error: errorMessage(err) }))
    }, ms)
    t.unref()
    this.timers.push(t)
  }

  async stop () {
    this.closing = true
    clearTimeout(this._regTimer)
    clearTimeout(this._escrowTimer)
    if (this._escrowWake) this._escrowWake()
    for (const t of this.timers) clearInterval(t)
    for (const ch of this.channels) ch.close()
    if (this.mirror) await this.mirror.close().catch(() => {})
    if (this.mirrorSwarm) await this.mirrorSwarm.destroy().catch(() => {})
    if (this.swarm) await this.swarm.destroy().catch(() => {})
    if (this.drive) await this.drive.close().catch(() => {})
    if (this.relay) await this.relay.close().catch(() => {})
    if (this.store) await this.store.close().catch(() => {})
    if (this.gatewayWriter && this.gatewayWriter.secretKey) wipe(this.gatewayWriter.secretKey)
    if (this.escrowClient) wipe(this.escrowClient.signing.secretKey)
  }

  status () {
    return {
      relayKey: this.relayKey,
      swarmPublicKey: this.swarmPublicKey,
      identifier: this.identifier,
      gatewayPath: this.gatewayPath,
      ownerPubkey: this.ownerHex,
      npub: this.npub,
      protocol: this.opts.protocol,
      driveKey: this.drive ? this.drive.key : null,
      files: this.imported,
      requiresAuth: this.opts.requiresAuth,
      relay: this.relay ? this.relay.info() : null,
      registration: this.registrar ? this.registrar.last : null,
      swarmRegistration: this.lastSwarmRegistration,
      gateways: [...this.gateways.keys()],
      mirror: this.mirror ? this.mirror.status() : null,
      blindPeeringPublicKey: this.blindPeeringPublicKey,
      join: this.joinState,
      gatewayWriterKey: this.gatewayWriter ? this.gatewayWriter.writerKey : null,
      escrow: this.escrowState,
      pendingWrites: this.pendingWrites || null,
      pid: process.pid
    }
  }

  // ---- blind-peer mirroring ----

  _startMirror (blindPeerKey) {
    if (this.closing || !/^[0-9a-f]{64}$/.test(blindPeerKey)) return
    if (this.mirror && this.mirror.blindPeerKey === blindPeerKey) return
    if (this.mirror) this.mirror.close().catch(() => {})
    if (this.blindPeeringKeyPair && !this.mirrorSwarm) {
      this.mirrorSwarm = createSwarm({ bootstrap: this.opts.bootstrap, host: this.opts.swarmHost || '127.0.0.1', keyPair: this.blindPeeringKeyPair })
    }
    this.mirror = new RelayMirror({
      swarm: this.mirrorSwarm || this.swarm,
      store: this.store,
      relay: this.relay,
      drive: this.drive,
      blindPeerKey,
      // Without metadata posts the gateway learns the cores from relayCores, as from real workers.
      registrar: this.opts.metadataPost ? this.registrar : null,
      identifier: this.identifier,
      ownerPeerKey: this.swarmPublicKey,
      logger: this.log.child('mirror'),
      onAccepted: () => { if (!this.closing) this.writeStatus() }
    })
    this.mirror.start()
    this.emit('mirror', { blindPeerKey })
    this.writeStatus()
  }

  /** Periodic wakeup hint while other writers exist (their appends may arrive via the mirror). */
  async _wakeupOthers () {
    if (this.closing) return
    const keys = await this.relay.writerKeys()
    if (keys.length > 1) await this.relay.hintWakeupAll()
    if (this.mirror && keys.some((k) => !this.mirror.cores.has(k))) this.mirror.onRelayChanged()
  }

  writeStatus () {
    const file = this.opts.statusFile || path.join(this.storageDir, 'status.json')
    writeFileAtomic(file, JSON.stringify(this.status(), null, 2) + '\n')
  }

  // ---- worker protocol ----

  _handshake () {
    return {
      ...baseHandshake({ isServer: true }),
      capabilities: this.opts.wsPush ? WORKER_CAPABILITIES : POLL_ONLY_CAPABILITIES,
      role: 'relay-peer',
      isGateway: false,
      gatewayReplica: false,
      relayPublicKey: this.swarmPublicKey,
      peerId: this.swarmPublicKey,
      relayCount: 1,
      delegateReqToPeers: false
    }
  }

  _onConnection (stream) {
    const peerKey = b4a.toString(stream.remotePublicKey, 'hex')
    stream.on('error', () => {})
    // Hosts of a shared relay replicate their whole store with each other, as real workers do
    // on their relay swarm; a plain host never does, so gateways see only the worker protocol.
    if (this.replicates) this.store.replicate(stream)
    const ch = RelayChannel.from(stream, {
      protocol: this.opts.protocol,
      handshake: this._handshake(),
      onrequest: (req) => this._handle(ch, peerKey, req)
    })
    if (ch.closed) return
    this.channels.add(ch)
    if (this.opts.join && peerKey === this.opts.joinPeer) {
      ch.once('open', () => this._requestJoin(ch))
    }
    ch.on('close', () => {
      this.channels.delete(ch)
      const gw = this.gateways.get(peerKey)
      if (gw && gw.channel === ch) this.gateways.delete(peerKey)
    })
    stream.on('close', () => ch.close())
    ch.open()
  }

  async _handle (ch, peerKey, req) {
    this.metrics.totalRequests++
    try {
      const res = await this.router.handle({ ...req, channel: ch, peerKey })
      if (res && res.statusCode < 400) this.metrics.successfulRequests++
      else this.metrics.failedRequests++
      return res
    } catch (err) {
      this.metrics.failedRequests++
      throw err
    }
  }

  /** Demo helper: sign an event with the owner key (only when the worker generated it). */
  ownerSecretKeyHex () {
    return this.ownerSecretKey
  }
}

/**
 * The worker's concerns live in their own modules as classes whose methods run on the worker
 * itself (they share its state: relay, gateways, registrar, options); their methods are copied
 * onto ReferenceWorker's prototype here, so callers see one object.
 */
for (const part of [WorkerRoutes, WorkerFrames, WorkerRegistration, WorkerGatewayWriter, WorkerJoin, WorkerPendingWrites]) {
  for (const name of Object.getOwnPropertyNames(part.prototype)) {
    if (name === 'constructor') continue
    if (Object.prototype.hasOwnProperty.call(ReferenceWorker.prototype, name)) throw new Error(`worker method ${name} defined twice`)
    Object.defineProperty(ReferenceWorker.prototype, name, Object.getOwnPropertyDescriptor(part.prototype, name))
  }
}

export { randomSecretKeyHex }