/** Response helpers shared by the reference worker's route handlers. */
export const NDJSON = { 'content-type': 'application/x-ndjson' }
export const JSONH = { 'content-type': 'application/json' }

export function ndjson (frames) {
  return Buffer.from(frames.map((f) => JSON.stringify(f)).join('\n'), 'utf8')
}
