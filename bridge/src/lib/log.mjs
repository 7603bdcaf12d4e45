const LEVELS = { debug: 10, info: 20, warn: 30, error: 40, silent: 100 }

/**
 * Minimal structured logger writing one JSON object per line to stderr, so stdout stays free
 * for machine-readable announcements. Never pass key material or secrets in `fields`.
 */
export function createLogger (name, level = process.env.HYPERTUNA_BRIDGE_LOG_LEVEL || 'info') {
  const threshold = LEVELS[level] ?? LEVELS.info
  const emit = (lvl, msg, fields) => {
    if (LEVELS[lvl] < threshold) return
    const line = { ts: new Date().toISOString(), level: lvl, logger: name, msg, ...fields }
    try {
      process.stderr.write(JSON.stringify(line) + '\n')
    } catch {}
  }
  return {
    debug: (msg, fields) => emit('debug', msg, fields),
    info: (msg, fields) => emit('info', msg, fields),
    warn: (msg, fields) => emit('warn', msg, fields),
    error: (msg, fields) => emit('error', msg, fields),
    child: (sub) => createLogger(`${name}.${sub}`, level)
  }
}

export function errorMessage (err) {
  if (!err) return 'unknown error'
  return err.message || String(err)
}
