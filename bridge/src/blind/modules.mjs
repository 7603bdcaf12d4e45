import fs from 'node:fs'
import path from 'node:path'
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'

/**
 * The blind peer runs on corestore 7 / hypercore 11, which cannot share this package's tree: the
 * relay Autobase (6.5.13) is pinned to hypercore 10 by an override. The second tree lives in
 * `blind/` (its own package.json and lockfile, installed by this package's postinstall) and is
 * loaded through a require rooted there, so every module the blind peer touches (hyperswarm,
 * hyperdht, protomux, corestore, hyperbee) comes from that one tree.
 */
export const BLIND_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'blind')

let cached = null

export function blindTreeInstalled () {
  return fs.existsSync(path.join(BLIND_DIR, 'node_modules', 'blind-peer', 'package.json'))
}

export function loadBlindModules () {
  if (cached) return cached
  if (!blindTreeInstalled()) {
    throw new Error(`the blind-peer install tree is missing (${BLIND_DIR}/node_modules); run 'npm ci' in bridge/ (its postinstall installs blind/), or set HYPERTUNA_BRIDGE_BLIND_PEER=off`)
  }
  const req = createRequire(path.join(BLIND_DIR, 'package.json'))
  cached = {
    BlindPeer: req('blind-peer'),
    Corestore: req('corestore'),
    Hyperbee: req('hyperbee'),
    HyperDHT: req('hyperdht'),
    Hyperswarm: req('hyperswarm'),
    c: req('compact-encoding'),
    IdEnc: req('hypercore-id-encoding'),
    hcrypto: req('hypercore-crypto'),
    versions: {
      blindPeer: req('blind-peer/package.json').version,
      corestore: req('corestore/package.json').version,
      hypercore: req('hypercore/package.json').version,
      hyperbee: req('hyperbee/package.json').version
    }
  }
  return cached
}
