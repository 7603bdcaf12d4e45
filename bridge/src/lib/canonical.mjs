import { createHmac, timingSafeEqual } from 'node:crypto'

/**
 * Canonical JSON as workers sign it: JSON.stringify with every plain object's keys
 * re-inserted in default JS sort order, recursively. Arrays keep their order, `undefined`
 * members vanish, numbers use JS formatting. Integer-like keys still come out first in
 * numeric order because JS objects enumerate them that way; this is part of the contract.
 */
export function stableStringify (value) {
  return JSON.stringify(value, (_key, val) => {
    if (val && typeof val === 'object' && !Array.isArray(val) && !Buffer.isBuffer(val)) {
      const sorted = {}
      for (const k of Object.keys(val).sort()) sorted[k] = val[k]
      return sorted
    }
    return val
  })
}

/** Lowercase hex HMAC-SHA256 of `message` (a string is signed as-is) under a UTF-8 secret. */
export function hmacHex (secret, message) {
  const text = typeof message === 'string' ? message : stableStringify(message)
  return createHmac('sha256', Buffer.from(secret, 'utf8')).update(text, 'utf8').digest('hex')
}

/** Constant-time comparison of two hex signatures; lengths are compared first. */
export function signatureMatches (expectedHex, givenHex) {
  if (typeof givenHex !== 'string' || typeof expectedHex !== 'string') return false
  const a = Buffer.from(expectedHex, 'utf8')
  const b = Buffer.from(givenHex, 'utf8')
  if (a.length !== b.length) return false
  return timingSafeEqual(a, b)
}

/** Relay access token: base64url(canonical payload) + '.' + hex HMAC over that exact JSON text. */
export function encodeToken (secret, payload) {
  const serialized = stableStringify(payload)
  return Buffer.from(serialized, 'utf8').toString('base64url') + '.' + hmacHex(secret, serialized)
}
