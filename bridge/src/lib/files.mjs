import fs from 'node:fs'
import path from 'node:path'

/** Write a file atomically (temp file + rename) so readers never observe a half-written JSON. */
export function writeFileAtomic (file, data, mode = 0o644) {
  fs.mkdirSync(path.dirname(file), { recursive: true })
  const tmp = `${file}.${process.pid}.${Date.now()}.tmp`
  fs.writeFileSync(tmp, data, { mode })
  fs.renameSync(tmp, file)
}

export function readJsonIfExists (file) {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8'))
  } catch (err) {
    if (err.code === 'ENOENT') return null
    throw err
  }
}
