import test from 'node:test'
import assert from 'node:assert/strict'
import fs from 'node:fs'
import { stableStringify, hmacHex, encodeToken, signatureMatches } from '../src/lib/canonical.mjs'
import { buildRegistration } from '../src/worker/registrar.mjs'

const vectors = JSON.parse(fs.readFileSync(new URL('./fixtures/js-compat.json', import.meta.url), 'utf8'))

test('stableStringify reproduces every canonical JSON vector byte for byte', () => {
  assert.ok(vectors.canonical_json.length >= 5)
  for (const v of vectors.canonical_json) {
    assert.equal(stableStringify(v.input), v.canonical)
  }
})

test('HMAC-SHA256 over canonical JSON matches the vectors', () => {
  for (const v of vectors.canonical_json) {
    assert.equal(hmacHex(vectors.secret, stableStringify(v.input)), v.hmac_sha256_hex)
    assert.equal(hmacHex(vectors.secret, v.input), v.hmac_sha256_hex)
  }
})

test('relay tokens match the vectors', () => {
  for (const t of vectors.tokens) {
    assert.equal(stableStringify(t.payload), t.serialized)
    assert.equal(encodeToken(vectors.secret, t.payload), t.token)
  }
})

test('undefined members are dropped and integer-like keys come first', () => {
  assert.equal(stableStringify({ b: undefined, a: null, 10: 1, 9: 2, z: [undefined] }), '{"9":2,"10":1,"a":null,"z":[null]}')
})

test('registration envelope signature verifies over the re-serialised registration', () => {
  const env = buildRegistration({
    secret: vectors.secret,
    relayKey: 'a'.repeat(64),
    peers: ['b'.repeat(64)],
    metadata: { name: 'x', gatewayPath: 'npub1x/x' },
    now: 1763683200123,
    nonce: '00112233445566778899aabb'
  })
  assert.match(env.registration.nonce, /^[0-9a-f]{24}$/)
  const reparsed = JSON.parse(JSON.stringify(env.registration))
  assert.ok(signatureMatches(hmacHex(vectors.secret, stableStringify(reparsed)), env.signature))
  assert.ok(!signatureMatches(hmacHex('other', stableStringify(reparsed)), env.signature))
  const fresh = buildRegistration({ secret: 's', relayKey: 'k', peers: [], metadata: {} })
  assert.match(fresh.registration.nonce, /^[0-9a-f]{24}$/)
  assert.ok(Math.abs(fresh.registration.issuedAt - Date.now()) < 5000)
})
