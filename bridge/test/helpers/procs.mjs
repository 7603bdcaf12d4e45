import { spawn } from 'node:child_process'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..')

/**
 * Spawn a node script and resolve once it prints `<marker> {json}` on stdout. The child is
 * killed by pid at cleanup; tests never leave processes behind.
 */
export function spawnReady (script, args, { env = {}, marker, timeoutMs = 30_000, cwd = ROOT } = {}) {
  const child = spawn(process.execPath, [path.join(ROOT, script), ...args], {
    cwd,
    // Children stop when our end of their stdin closes, so a killed test run leaves nothing behind.
    env: { ...process.env, HYPERTUNA_BRIDGE_LOG_LEVEL: 'warn', HYPERTUNA_BRIDGE_EXIT_ON_STDIN_CLOSE: '1', HYPERTUNA_WORKER_EXIT_ON_STDIN_CLOSE: '1', ...env },
    stdio: ['pipe', 'pipe', 'pipe']
  })
  const lines = []
  const stderr = []
  child.stderr.setEncoding('utf8')
  child.stderr.on('data', (d) => stderr.push(d))
  child.stdout.setEncoding('utf8')
  let buf = ''
  const ready = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${script} not ready in ${timeoutMs} ms: ${stderr.join('').slice(-2000)}`)), timeoutMs)
    child.stdout.on('data', (d) => {
      buf += d
      let i
      while ((i = buf.indexOf('\n')) !== -1) {
        const line = buf.slice(0, i)
        buf = buf.slice(i + 1)
        lines.push(line)
        child.emit('line', line)
        if (line.startsWith(marker + ' ')) {
          clearTimeout(timer)
          resolve(JSON.parse(line.slice(marker.length + 1)))
        }
      }
    })
    child.once('exit', (code) => {
      clearTimeout(timer)
      reject(new Error(`${script} exited with ${code} before ready: ${stderr.join('').slice(-2000)}`))
    })
  })
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })))
  return { child, ready, exited, lines, stderr }
}

export async function stopProcess (proc, timeoutMs = 10_000) {
  if (!proc || proc.child.exitCode !== null || proc.child.signalCode !== null) return
  proc.child.kill('SIGTERM')
  const timer = setTimeout(() => proc.child.kill('SIGKILL'), timeoutMs)
  await proc.exited
  clearTimeout(timer)
}

export function waitFor (fn, { timeoutMs = 20_000, intervalMs = 100, what = 'condition' } = {}) {
  const deadline = Date.now() + timeoutMs
  return new Promise((resolve, reject) => {
    const tick = async () => {
      let v
      try {
        v = await fn()
      } catch {}
      if (v) return resolve(v)
      if (Date.now() > deadline) return reject(new Error(`timed out waiting for ${what}`))
      setTimeout(tick, intervalMs)
    }
    tick()
  })
}
