import http from 'node:http'
import { stableStringify, hmacHex, signatureMatches } from '../../src/lib/canonical.mjs'

/**
 * A stand-in for the gateway's worker API that checks every signature the way the gateway must:
 * relay registrations and blind-peer metadata (HMAC-SHA256 over canonical JSON).
 */
export function startFakeGateway (secret) {
  const registrations = []
  const metadata = []
  const server = http.createServer((req, res) => {
    let body = ''
    req.on('data', (d) => { body += d })
    req.on('end', () => {
      const send = (code, obj) => {
        res.writeHead(code, { 'content-type': 'application/json' })
        res.end(JSON.stringify(obj))
      }
      let json
      try {
        json = JSON.parse(body)
      } catch {
        return send(400, { error: 'invalid-json' })
      }
      if (req.url === '/api/relays' && req.method === 'POST') {
        const valid = signatureMatches(hmacHex(secret, stableStringify(json.registration)), json.signature)
        registrations.push({ ...json, valid })
        return valid ? send(200, { status: 'ok' }) : send(401, { error: 'invalid-signature' })
      }
      if (req.url === '/api/blind-peer/metadata' && req.method === 'POST') {
        const valid = signatureMatches(hmacHex(secret, stableStringify(json.payload)), json.signature)
        metadata.push({ ...json, valid })
        return valid ? send(200, { status: 'ok' }) : send(401, { error: 'invalid-signature' })
      }
      send(404, { error: 'not-found' })
    })
  })
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => resolve({
      server,
      url: `http://127.0.0.1:${server.address().port}`,
      registrations,
      metadata,
      close: () => new Promise((resolve) => server.close(resolve))
    }))
  })
}
