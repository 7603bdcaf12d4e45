import test from 'node:test'
import assert from 'node:assert/strict'
import net from 'node:net'
import SecretStream from '@hyperswarm/secret-stream'
import { RelayChannel, Router } from '../src/protocol/relay-protocol.mjs'

/** Both ends of an encrypted stream over loopback TCP: the framing real Hyperswarm connections use. */
async function securePair (t) {
  const server = net.createServer()
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  const accepted = new Promise((resolve) => server.once('connection', resolve))
  const initiator = new SecretStream(true, net.connect(server.address().port, '127.0.0.1'))
  const responder = new SecretStream(false, await accepted)
  t.after(() => { initiator.destroy(); responder.destroy(); server.close() })
  return [initiator, responder]
}

test('requests and replies up to the gateway frame limit cross the worker protocol intact', async (t) => {
  const [a, b] = await securePair(t)
  const router = new Router().add('POST', '/post/relay/:id', (req) => ({
    statusCode: 200,
    headers: { 'content-type': 'application/x-ndjson' },
    body: Buffer.concat([Buffer.from(JSON.stringify(['OK', String(req.body.length), true, '']) + '\n'), req.body])
  }))
  const worker = RelayChannel.from(b, { handshake: { isServer: true }, onrequest: (req) => router.handle(req) })
  const gateway = RelayChannel.from(a, { handshake: {}, requestTimeoutMs: 10_000 })
  worker.open()
  gateway.open()
  await new Promise((resolve) => gateway.once('open', resolve))
  // 131072 bytes is HYPERTUNA_MAX_FRAME_BYTES's default; the POST body wraps the frame in JSON.
  for (const size of [1_000, 36_600, 37_000, 65_536, 131_072, 140_000]) {
    const event = { content: 'é"\\\n'.repeat(Math.ceil(size / 5)).slice(0, size) }
    const body = Buffer.from(JSON.stringify({ message: JSON.stringify(['EVENT', event]), connectionKey: 'ab' }))
    const res = await gateway.request({ method: 'POST', path: '/post/relay/x', body })
    assert.equal(res.statusCode, 200)
    const [first, ...rest] = res.body.toString('utf8').split('\n')
    assert.deepEqual(JSON.parse(first), ['OK', String(body.length), true, ''])
    assert.ok(Buffer.from(rest.join('\n'), 'utf8').equals(body), `body of ${size} bytes changed in transit`)
  }
})
