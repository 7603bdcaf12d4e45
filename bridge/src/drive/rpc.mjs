import { RpcError } from '../rpc/server.mjs'
import { DriveReader } from '../blind/drive-reader.mjs'

/**
 * The file RPCs: `drive.read` (streamed, like `peer.request` with `stream: true`) tries the sources
 * Python names, in its order: `mirror` (a worker's drive as the blind peer holds it, by the drive keys
 * Python knows from the mirror metadata) and `gateway-drive` (the relay's gateway-owned drive). The
 * head says which source answered. Uploads into gateway drives are `drive.upload.*`; artifacts
 * `drive.putJson`.
 */
export function registerDriveMethods (rpc, { drives, blind, wrap }) {
  const reader = () => (blind() ? new DriveReader(blind()) : null)
  const gateway = () => {
    if (!drives()) throw new RpcError('unavailable', 'gateway drives are not started')
    return drives()
  }

  rpc.register('drive.read', wrap(async (params, ctx) => {
    const sources = Array.isArray(params.sources) ? params.sources : ['mirror', 'gateway-drive']
    for (const source of sources) {
      try {
        if (source === 'mirror') {
          const r = reader()
          if (r && Array.isArray(params.driveKeys) && params.driveKeys.length) {
            return await r.read({ ...params, paths: (params.mirrorPaths || []) }, ctx)
          }
        } else if (source === 'gateway-drive') {
          if (drives() && Array.isArray(params.gatewayPaths) && params.gatewayPaths.length) {
            return await gateway().read({ ...params, kind: params.kind || 'relay', paths: params.gatewayPaths || [] }, ctx)
          }
        } else {
          throw new RpcError('invalid-params', 'sources may list mirror and gateway-drive')
        }
      } catch (err) {
        // Absent here: the next source is tried. Anything else (bad input, a stream already begun) ends the call.
        if (err.code !== 'not-found') throw err
      }
    }
    throw new RpcError('not-found', 'no copy of this file is held')
  }), { streaming: true })

  rpc.register('drive.info', wrap(async (params) => gateway().info(params)))
  rpc.register('drive.upload.begin', wrap(async (params) => gateway().uploadBegin(params)))
  rpc.register('drive.upload.chunk', wrap(async (params) => gateway().uploadChunk(params)))
  rpc.register('drive.upload.commit', wrap(async (params) => gateway().uploadCommit(params)))
  rpc.register('drive.upload.abort', wrap(async (params) => gateway().uploadAbort(params)))
  rpc.register('drive.putJson', wrap(async (params) => gateway().putJson(params)))
}
