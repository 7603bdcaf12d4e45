// Uses one Nostr client library against a relay URL exactly as the gateway prints it:
//   node check.mjs <nostr-tools|ndk> <ws://…/<relay>?token=…>
// Two clients of that library, each with its own fresh key: the writer publishes an event (OK true), the
// reader reads it back with a REQ, opens a live subscription and receives the writer's next event after
// EOSE; then the library's NIP-11 helper fetches the relay information document. Prints one JSON line
// with what was seen and exits 0, or prints the error and exits 1 (2 when it took longer than 30 s).
import net from 'node:net'
import WebSocket from 'ws'

const DEADLINE_MS = 30_000
const [library, url] = process.argv.slice(2)

function fail (message, code = 1) {
  process.stderr.write(`check ${library}: ${message}\n`)
  process.exit(code)
}

// Nothing here may reach beyond this machine: a connection to any other address fails the check.
const connect = net.Socket.prototype.connect
net.Socket.prototype.connect = function (...args) {
  // net.connect() passes its normalized [options, callback] pair; socket.connect() its own arguments.
  const first = Array.isArray(args[0]) ? args[0][0] : args[0]
  const options = typeof first === 'object' && first !== null ? first : { port: first, host: args[1] }
  const host = options.path ? 'unix' : (options.host ?? 'localhost')
  if (!['unix', 'localhost', '127.0.0.1', '::1'].includes(host)) fail(`refused a connection to ${host}`)
  return connect.apply(this, args)
}

function within (promise, what, ms = 10_000) {
  return Promise.race([
    promise,
    new Promise((_resolve, reject) => setTimeout(() => reject(new Error(`no ${what} within ${ms} ms`)), ms).unref())
  ])
}

async function withNostrTools () {
  const { generateSecretKey, getPublicKey, finalizeEvent } = await import('nostr-tools/pure')
  const { Relay, useWebSocketImplementation } = await import('nostr-tools/relay')
  const { fetchRelayInformation } = await import('nostr-tools/nip11')
  useWebSocketImplementation(WebSocket)
  const writerKey = generateSecretKey()
  const writer = await Relay.connect(url)
  const reader = await Relay.connect(url)
  const sign = (content) => finalizeEvent({ kind: 1, created_at: Math.floor(Date.now() / 1000), tags: [['t', 'clients']], content }, writerKey)
  const stored = sign(`nostr-tools stored ${Math.random()}`)
  await within(writer.publish(stored), 'OK for the stored event')
  const author = getPublicKey(writerKey)
  const readBack = await within(new Promise((resolve) => {
    const ids = []
    const sub = reader.subscribe([{ authors: [author], kinds: [1] }], {
      onevent: (event) => ids.push(event.id),
      oneose: () => { sub.close(); resolve(ids) }
    })
  }), 'EOSE for the read-back')
  const live = sign(`nostr-tools live ${Math.random()}`)
  const liveId = await within(new Promise((resolve, reject) => {
    reader.subscribe([{ authors: [author], kinds: [1], since: live.created_at }], {
      onevent: (event) => { if (event.id === live.id) resolve(event.id) },
      oneose: () => { writer.publish(live).catch(reject) }
    })
  }), 'live event')
  const info = await within(fetchRelayInformation(url), 'NIP-11 document')
  writer.close()
  reader.close()
  return { url, published: stored.id, readBack, live: liveId, nip11: info }
}

async function withNdk () {
  globalThis.WebSocket = WebSocket // NDK opens sockets with the global WebSocket (Node 20 has none)
  const { default: NDK, NDKEvent, NDKPrivateKeySigner } = await import('@nostr-dev-kit/ndk')
  const open = async () => {
    // No outbox model and no relays of the signer's own: NDK would dial its default public relays.
    const ndk = new NDK({
      explicitRelayUrls: [url],
      signer: NDKPrivateKeySigner.generate(),
      enableOutboxModel: false,
      autoConnectUserRelays: false
    })
    await ndk.connect(5000)
    const relays = [...ndk.pool.relays.values()]
    if (relays.length !== 1 || !relays[0].connected) {
      throw new Error(`NDK did not connect to ${url} (pool: ${relays.map((r) => r.url).join(', ') || 'empty'})`)
    }
    return ndk
  }
  const writer = await open()
  const reader = await open()
  const relayUrl = [...writer.pool.relays.keys()][0]
  const author = (await writer.signer.user()).pubkey
  const publish = async (content) => {
    const event = new NDKEvent(writer, { kind: 1, content, tags: [['t', 'clients']] })
    const published = await within(event.publish(), `OK for "${content}"`)
    if (published.size !== 1) throw new Error(`"${content}" was not accepted by the relay`)
    return event
  }
  const stored = await publish(`ndk stored ${Math.random()}`)
  const found = await within(reader.fetchEvents({ authors: [author], kinds: [1] }), 'read-back')
  const readBack = [...found].filter((event) => event.onRelays.some((r) => r.url === relayUrl)).map((event) => event.id)
  let liveContent = null
  const liveId = await within(new Promise((resolve, reject) => {
    reader.subscribe({ authors: [author], kinds: [1], since: Math.floor(Date.now() / 1000) }, {
      closeOnEose: false,
      groupable: false,
      onEvent: (event) => { if (event.content === liveContent) resolve(event.id) },
      onEose: () => {
        liveContent = `ndk live ${Math.random()}`
        publish(liveContent).catch(reject)
      }
    })
  }), 'live event')
  const info = await within([...reader.pool.relays.values()][0].fetchInfo(true), 'NIP-11 document')
  return { url: relayUrl, published: stored.id, readBack, live: liveId, nip11: info }
}

const run = { 'nostr-tools': withNostrTools, ndk: withNdk }[library]
if (!run || !url) fail('usage: node check.mjs <nostr-tools|ndk> <relay url>')
setTimeout(() => fail(`not done within ${DEADLINE_MS} ms`, 2), DEADLINE_MS).unref()
try {
  const result = await run()
  process.stdout.write(JSON.stringify(result) + '\n')
  process.exit(0)
} catch (err) {
  fail(err && err.stack ? err.stack : String(err))
}
