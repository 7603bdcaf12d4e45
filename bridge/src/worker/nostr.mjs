import { createHash } from 'node:crypto'
import { schnorr } from '@noble/curves/secp256k1.js'

const HEX64 = /^[0-9a-f]{64}$/
const HEX128 = /^[0-9a-f]{128}$/

export function sha256Hex (text) {
  return createHash('sha256').update(text, 'utf8').digest('hex')
}

/** NIP-01 event id: sha256 of the JSON array [0, pubkey, created_at, kind, tags, content]. */
export function computeEventId (ev) {
  return sha256Hex(JSON.stringify([0, ev.pubkey, ev.created_at, ev.kind, ev.tags, ev.content]))
}

/** Structural check; returns a reason string or null. */
export function structuralProblem (ev) {
  if (!ev || typeof ev !== 'object' || Array.isArray(ev)) return 'event must be an object'
  if (typeof ev.id !== 'string' || !HEX64.test(ev.id)) return 'id must be 64 lowercase hex'
  if (typeof ev.pubkey !== 'string' || !HEX64.test(ev.pubkey)) return 'pubkey must be 64 lowercase hex'
  if (typeof ev.sig !== 'string' || !HEX128.test(ev.sig)) return 'sig must be 128 lowercase hex'
  if (!Number.isInteger(ev.kind) || ev.kind < 0 || ev.kind > 65535) return 'kind must be an integer 0..65535'
  if (!Number.isInteger(ev.created_at) || ev.created_at < 0) return 'created_at must be a non-negative integer'
  if (typeof ev.content !== 'string') return 'content must be a string'
  if (!Array.isArray(ev.tags)) return 'tags must be an array'
  for (const t of ev.tags) {
    if (!Array.isArray(t) || t.some((x) => typeof x !== 'string')) return 'tags must be arrays of strings'
  }
  return null
}

/** Structure, and the id equals the recomputed hash (no signature check); a NIP-01 "invalid: ..." reason or null. */
export function idProblem (ev) {
  const problem = structuralProblem(ev)
  if (problem) return `invalid: ${problem}`
  if (computeEventId(ev) !== ev.id) return 'invalid: event id does not match its content'
  return null
}

/**
 * Full verification: idProblem, and a valid BIP-340 Schnorr signature by `pubkey` over the id.
 * Returns a NIP-01 "invalid: ..." reason or null.
 */
export function verifyEvent (ev) {
  const problem = idProblem(ev)
  if (problem) return problem
  let ok = false
  try {
    ok = schnorr.verify(Buffer.from(ev.sig, 'hex'), Buffer.from(ev.id, 'hex'), Buffer.from(ev.pubkey, 'hex'))
  } catch {
    ok = false
  }
  return ok ? null : 'invalid: bad signature'
}

export function getPublicKeyHex (secretKeyHex) {
  return Buffer.from(schnorr.getPublicKey(Buffer.from(secretKeyHex, 'hex'))).toString('hex')
}

export function randomSecretKeyHex () {
  return Buffer.from(schnorr.utils.randomSecretKey()).toString('hex')
}

/** Build and sign an event (used by tests and demos). */
export function signEvent ({ kind, content = '', tags = [], created_at: createdAt }, secretKeyHex) {
  const ev = {
    pubkey: getPublicKeyHex(secretKeyHex),
    created_at: createdAt ?? Math.floor(Date.now() / 1000),
    kind,
    tags,
    content
  }
  ev.id = computeEventId(ev)
  ev.sig = Buffer.from(schnorr.sign(Buffer.from(ev.id, 'hex'), Buffer.from(secretKeyHex, 'hex'))).toString('hex')
  return ev
}

export function isReplaceable (kind) {
  return kind === 0 || kind === 3 || (kind >= 10000 && kind < 20000)
}

export function isEphemeral (kind) {
  return kind >= 20000 && kind < 30000
}

export function isAddressable (kind) {
  return kind >= 30000 && kind < 40000
}

/** Key under which only the newest event survives (NIP-01), or null for regular events. */
export function replaceKey (ev) {
  if (isReplaceable(ev.kind)) return `${ev.pubkey}:${ev.kind}`
  if (isAddressable(ev.kind)) {
    const d = ev.tags.find((t) => t[0] === 'd')
    return `${ev.pubkey}:${ev.kind}:${d && d.length > 1 ? d[1] : ''}`
  }
  return null
}

export const DELETION_KIND = 5

/** NIP-01: `a` replaces `b` (same replaceKey) when it is newer, or as new with the lower id. */
export function supersedes (a, b) {
  if (a.created_at !== b.created_at) return a.created_at > b.created_at
  return a.id < b.id
}

/**
 * The NIP-09 `a`-tag address of a replaceable (`<kind>:<pubkey>:`) or addressable
 * (`<kind>:<pubkey>:<d>`) event, or null for other kinds.
 */
export function addressOf (ev) {
  if (isReplaceable(ev.kind)) return `${ev.kind}:${ev.pubkey}:`
  if (isAddressable(ev.kind)) {
    const d = ev.tags.find((t) => t[0] === 'd')
    return `${ev.kind}:${ev.pubkey}:${d && d.length > 1 ? d[1] : ''}`
  }
  return null
}

/** Validate one REQ filter; returns a reason string or null. */
export function filterProblem (f) {
  if (!f || typeof f !== 'object' || Array.isArray(f)) return 'filter must be an object'
  for (const [k, v] of Object.entries(f)) {
    if (k === 'ids' || k === 'authors') {
      if (!Array.isArray(v) || v.some((x) => typeof x !== 'string')) return `${k} must be a list of strings`
    } else if (k === 'kinds') {
      if (!Array.isArray(v) || v.some((x) => !Number.isInteger(x))) return 'kinds must be a list of integers'
    } else if (k === 'since' || k === 'until' || k === 'limit') {
      if (!Number.isInteger(v) || v < 0) return `${k} must be a non-negative integer`
    } else if (/^#[a-zA-Z]$/.test(k)) {
      if (!Array.isArray(v) || v.some((x) => typeof x !== 'string')) return `${k} must be a list of strings`
    }
  }
  return null
}

/** NIP-01 filter match: every present condition must hold; `since`/`until` are inclusive. */
export function matchFilter (f, ev) {
  if (f.ids && !f.ids.includes(ev.id)) return false
  if (f.authors && !f.authors.includes(ev.pubkey)) return false
  if (f.kinds && !f.kinds.includes(ev.kind)) return false
  if (f.since !== undefined && ev.created_at < f.since) return false
  if (f.until !== undefined && ev.created_at > f.until) return false
  for (const [k, values] of Object.entries(f)) {
    if (k.length !== 2 || k[0] !== '#') continue
    const name = k[1]
    if (!ev.tags.some((t) => t[0] === name && t.length > 1 && values.includes(t[1]))) return false
  }
  return true
}

export function matchFilters (filters, ev) {
  return filters.some((f) => matchFilter(f, ev))
}

/** Newest first; ties broken by lowest id, as NIP-01 asks. */
export function compareNewestFirst (a, b) {
  if (a.created_at !== b.created_at) return b.created_at - a.created_at
  return a.id < b.id ? -1 : a.id > b.id ? 1 : 0
}

/**
 * A REQ's answer from one `query(filter)` per filter, in filter order: an event several filters match is sent
 * once (NIP-01 REQ semantics).
 */
export async function answerFilters (filters, query) {
  const out = []
  const ids = new Set()
  for (const f of filters) {
    for (const ev of await query(f)) {
      if (ids.has(ev.id)) continue
      ids.add(ev.id)
      out.push(ev)
    }
  }
  return out
}

// bech32 (BIP-173), enough for npub encoding/decoding.
const CHARSET = 'qpzry9x8gf2tvdw0s3jn54khce6mua7l'
const GEN = [0x3b6a57b2, 0x26508e6d, 0x1ea119fa, 0x3d4233dd, 0x2a1462b3]

function polymod (values) {
  let chk = 1
  for (const v of values) {
    const b = chk >> 25
    chk = ((chk & 0x1ffffff) << 5) ^ v
    for (let i = 0; i < 5; i++) if ((b >> i) & 1) chk ^= GEN[i]
  }
  return chk
}

function hrpExpand (hrp) {
  const out = []
  for (const ch of hrp) out.push(ch.charCodeAt(0) >> 5)
  out.push(0)
  for (const ch of hrp) out.push(ch.charCodeAt(0) & 31)
  return out
}

function convertBits (data, from, to, pad) {
  let acc = 0
  let bits = 0
  const out = []
  const maxv = (1 << to) - 1
  for (const value of data) {
    acc = (acc << from) | value
    bits += from
    while (bits >= to) {
      bits -= to
      out.push((acc >> bits) & maxv)
    }
  }
  if (pad) {
    if (bits > 0) out.push((acc << (to - bits)) & maxv)
  } else if (bits >= from || ((acc << (to - bits)) & maxv)) {
    throw new Error('invalid bech32 padding')
  }
  return out
}

export function bech32Encode (hrp, bytes) {
  const data = convertBits(bytes, 8, 5, true)
  const values = hrpExpand(hrp).concat(data, [0, 0, 0, 0, 0, 0])
  const mod = polymod(values) ^ 1
  const checksum = []
  for (let i = 0; i < 6; i++) checksum.push((mod >> (5 * (5 - i))) & 31)
  return hrp + '1' + data.concat(checksum).map((d) => CHARSET[d]).join('')
}

export function bech32Decode (str) {
  const s = str.toLowerCase()
  const pos = s.lastIndexOf('1')
  if (pos < 1 || pos + 7 > s.length) throw new Error('invalid bech32 string')
  const hrp = s.slice(0, pos)
  const data = []
  for (const ch of s.slice(pos + 1)) {
    const d = CHARSET.indexOf(ch)
    if (d === -1) throw new Error('invalid bech32 character')
    data.push(d)
  }
  if (polymod(hrpExpand(hrp).concat(data)) !== 1) throw new Error('invalid bech32 checksum')
  return { hrp, bytes: Buffer.from(convertBits(data.slice(0, -6), 5, 8, false)) }
}

export function npubFromHex (hex) {
  return bech32Encode('npub', Buffer.from(hex, 'hex'))
}

export function hexFromNpubOrHex (value) {
  if (typeof value !== 'string') throw new Error('owner must be an npub or 64-hex pubkey')
  if (HEX64.test(value.toLowerCase())) return value.toLowerCase()
  const { hrp, bytes } = bech32Decode(value)
  if (hrp !== 'npub' || bytes.length !== 32) throw new Error('owner must be an npub or 64-hex pubkey')
  return bytes.toString('hex')
}
