import b4a from 'b4a'
import HypercoreId from 'hypercore-id-encoding'

/** A 32-byte key (Buffer or 64-hex) as the z-base-32 hypercore id real workers send. */
export function z32Key (key) {
  return HypercoreId.encode(typeof key === 'string' ? b4a.from(key, 'hex') : key)
}

/** The key of a core-like object the way real workers resolve it: `.core` first, then `.key`. */
function keyOf (candidate) {
  if (!candidate) return null
  const core = candidate.core || candidate
  const key = core.key || core.discoveryKey || null
  return key && key.byteLength === 32 ? key : null
}

/**
 * `relayCores` as a real worker puts them in its signed registration (`GatewayService`'s relay-core
 * collection in hyperpipe-core): z-base-32 keys with roles, probed on the relay's Autobase in this
 * order and each key listed once, so a key that plays two parts keeps the first role ("autobase"
 * for the bootstrap core, which on the host that created the relay is also its local writer):
 * the Autobase itself ("autobase"), its system view ("autobase-system", "autobase-system-core"),
 * "autobase-core", the local writer ("autobase-local"), a default writer ("autobase-writer") and
 * the view ("autobase-view"), then writer lists as "autobase-writer-<n>" (`activeWriters` only when a
 * plain array, which Autobase 6.5.13's is not, so real workers send none for it). Writer
 * cores learnt otherwise (a host that joined, the gateway writer) follow without a role, as the
 * core references a real worker keeps for a relay do.
 */
export function collectRelayCores (base, extraKeys = []) {
  const seen = new Set()
  const cores = []
  const add = (candidate, role = null) => {
    const key = keyOf(candidate)
    if (!key) return
    const id = z32Key(key)
    if (seen.has(id)) return
    seen.add(id)
    cores.push(role ? { key: id, role } : { key: id })
  }
  const addList = (list, prefix) => {
    if (!Array.isArray(list)) return
    list.forEach((entry, i) => add(entry && entry.core ? entry.core : entry, `${prefix}-${i}`))
  }
  add(base, 'autobase')
  add(base.system, 'autobase-system')
  add(base.system && base.system.core, 'autobase-system-core')
  add(base.core, 'autobase-core')
  add(base.local, 'autobase-local')
  add(base.localInput, 'autobase-local')
  add(base.localWriter, 'autobase-local')
  add(base.defaultWriter, 'autobase-writer')
  add(base.view, 'autobase-view')
  addList(base.activeWriters, 'autobase-writer')
  addList(base.writers, 'autobase-writer')
  addList(base.inputs && !Array.isArray(base.inputs) ? Array.from(base.inputs) : base.inputs, 'autobase-writer')
  if (base.writer && typeof base.writer === 'object') add(base.writer, 'autobase-writer')
  for (const key of extraKeys) add({ key: b4a.from(key, 'hex') })
  return cores
}
