'use strict'
// Network guard for the worker runtime under test, loaded with `node --require ./guard.cjs`.
//
// The published worker runtime builds its swarms with no bootstrap list (the public DHT) and its
// create-relay step tries public Nostr relays. Under test, every DHT must join the gateway's loopback
// testnet and nothing may leave 127.0.0.0/8. This preload:
//   - replaces hyperdht's default bootstrap list (every copy in this package's tree) with the testnet
//     list from HYPERTUNA_INTEROP_BOOTSTRAP, so `new Hyperswarm()` without options joins the testnet;
//   - binds every UDX socket that asks for the wildcard address to 127.0.0.1;
//   - refuses, and reports, any UDP send, UDX stream, TCP/TLS connection or DNS lookup whose target is
//     not loopback: the attempt throws in the caller and a `HYPERTUNA_INTEROP_VIOLATION {json}` line goes
//     to stdout, which the test harness turns into a failure;
//   - applies the desktop host's policy for unhandled rejections and uncaught exceptions (log, exit
//     non-zero) so a failure that would kill a real worker fails the test instead of passing silently.

const fs = require('node:fs')
const path = require('node:path')
const net = require('node:net')
const dns = require('node:dns')
const dgram = require('node:dgram')

const ROOT = path.join(__dirname, 'node_modules')
const EXIT_FATAL = 70

function emit (marker, data) {
  try {
    process.stdout.write(`${marker} ${JSON.stringify(data)}\n`)
  } catch {}
}

function isLoopback (host) {
  if (typeof host !== 'string' || host === '') return false
  const h = host.toLowerCase().replace(/^\[|\]$/g, '')
  if (h === 'localhost' || h === '::1' || h === '0:0:0:0:0:0:0:1') return true
  const v4 = h.startsWith('::ffff:') ? h.slice(7) : h
  return net.isIPv4(v4) && v4.split('.')[0] === '127'
}

function refuse (kind, target) {
  const stack = (new Error().stack || '').split('\n').slice(2, 9).map((l) => l.trim())
  emit('HYPERTUNA_INTEROP_VIOLATION', { kind, target: String(target), stack })
  const err = new Error(`interop network guard: ${kind} to non-loopback ${target} refused`)
  err.code = 'EINTEROPGUARD'
  throw err
}

// ---- bootstrap list ------------------------------------------------------------------------------

const bootstrap = (process.env.HYPERTUNA_INTEROP_BOOTSTRAP || '')
  .split(',').map((s) => s.trim()).filter(Boolean)
if (!bootstrap.length) {
  process.stderr.write('guard: HYPERTUNA_INTEROP_BOOTSTRAP (host:port,…) is required\n')
  process.exit(2)
}
for (const entry of bootstrap) {
  const host = entry.slice(0, entry.lastIndexOf(':'))
  if (!isLoopback(host)) {
    process.stderr.write(`guard: bootstrap ${entry} is not loopback\n`)
    process.exit(2)
  }
}

function findFiles (dir, rel, out, depth = 0) {
  if (depth > 8) return out
  let entries
  try { entries = fs.readdirSync(dir, { withFileTypes: true }) } catch { return out }
  for (const e of entries) {
    if (!e.isDirectory()) continue
    const sub = path.join(dir, e.name)
    const candidate = path.join(sub, rel)
    if (fs.existsSync(candidate)) out.push(candidate)
    if (e.name === 'node_modules' || e.name.startsWith('@') || depth === 0) {
      findFiles(sub, rel, out, depth + 1)
    } else {
      const nested = path.join(sub, 'node_modules')
      if (fs.existsSync(nested)) findFiles(nested, rel, out, depth + 1)
    }
  }
  return out
}

const constants = [...new Set(findFiles(ROOT, path.join('lib', 'constants.js'), [])
  .filter((f) => f.includes(`${path.sep}hyperdht${path.sep}`)))]
if (!constants.length) {
  process.stderr.write('guard: no hyperdht found under interop/node_modules (run npm ci)\n')
  process.exit(2)
}
for (const file of constants) {
  const list = require(file).BOOTSTRAP_NODES
  list.splice(0, list.length, ...bootstrap)
}

// ---- UDX (the DHT and every swarm stream) --------------------------------------------------------

const udxDirs = [...new Set(findFiles(ROOT, path.join('lib', 'socket.js'), [])
  .filter((f) => f.includes(`${path.sep}udx-native${path.sep}`)))]
for (const file of udxDirs) {
  const UDXSocket = require(file)
  const proto = UDXSocket.prototype
  if (proto.__interopGuard) continue
  proto.__interopGuard = true
  const bind = proto.bind
  proto.bind = function (port, host) {
    if (host === undefined || host === null || host === '0.0.0.0' || host === '::') host = '127.0.0.1'
    if (!isLoopback(host)) refuse('udp-bind', host)
    return bind.call(this, port, host)
  }
  for (const name of ['send', 'trySend']) {
    const original = proto[name]
    proto[name] = function (buffer, port, host, ttl) {
      if (host !== undefined && !isLoopback(host)) refuse('udp-send', `${host}:${port}`)
      return original.call(this, buffer, port, host, ttl)
    }
  }
  const streamFile = path.join(path.dirname(file), 'stream.js')
  if (fs.existsSync(streamFile)) {
    const sproto = require(streamFile).prototype
    const connect = sproto.connect
    sproto.connect = function (socket, remoteId, port, host, opts) {
      if (typeof host === 'string' && !isLoopback(host)) refuse('udx-connect', `${host}:${port}`)
      return connect.call(this, socket, remoteId, port, host, opts)
    }
  }
}

// ---- TCP / TLS / HTTP / WebSocket (all through net.Socket#connect) -------------------------------

const socketConnect = net.Socket.prototype.connect
net.Socket.prototype.connect = function (...args) {
  let options = args[0]
  if (Array.isArray(options)) options = options[0] // internal normalized form
  let host = null
  if (options && typeof options === 'object') {
    if (!options.path) host = options.host || 'localhost'
  } else if (typeof options === 'number' || (typeof options === 'string' && /^\d+$/.test(options))) {
    host = typeof args[1] === 'string' ? args[1] : 'localhost'
  }
  if (host !== null && !isLoopback(host)) refuse('tcp-connect', host)
  return socketConnect.apply(this, args)
}

// ---- DNS -----------------------------------------------------------------------------------------

const lookup = dns.lookup
dns.lookup = function (hostname, ...rest) {
  if (!isLoopback(hostname)) refuse('dns-lookup', hostname)
  return lookup.call(this, hostname, ...rest)
}
const promisesLookup = dns.promises.lookup
dns.promises.lookup = async function (hostname, ...rest) {
  if (!isLoopback(hostname)) refuse('dns-lookup', hostname)
  return promisesLookup.call(this, hostname, ...rest)
}
for (const name of ['resolve', 'resolve4', 'resolve6', 'resolveAny', 'resolveSrv', 'resolveTxt']) {
  const original = dns[name]
  dns[name] = function (hostname, ...rest) {
    if (!isLoopback(hostname)) refuse('dns-resolve', hostname)
    return original.call(this, hostname, ...rest)
  }
}

// ---- dgram (not used by the DHT, guarded for completeness) ---------------------------------------

const dgramSend = dgram.Socket.prototype.send
dgram.Socket.prototype.send = function (msg, ...rest) {
  const host = rest.find((a) => typeof a === 'string')
  if (host && !isLoopback(host)) refuse('udp-send', host)
  return dgramSend.call(this, msg, ...rest)
}

// ---- the desktop host's fatal-error policy -------------------------------------------------------

function fatal (kind, error) {
  emit('HYPERTUNA_INTEROP_FATAL', {
    kind,
    message: String(error?.message || error),
    stack: String(error?.stack || '').split('\n').slice(0, 8)
  })
  process.exit(EXIT_FATAL)
}
process.on('unhandledRejection', (reason) => fatal('unhandledRejection', reason))
process.on('uncaughtException', (error) => fatal('uncaughtException', error))

module.exports = { isLoopback }
