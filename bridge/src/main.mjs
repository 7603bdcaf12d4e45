#!/usr/bin/env node
import { loadBridgeConfig, ConfigError } from './config.mjs'
import { Bridge } from './bridge.mjs'
import { createLogger, errorMessage } from './lib/log.mjs'

const log = createLogger('bridge')

async function main () {
  let config
  try {
    config = loadBridgeConfig()
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`hypertuna-bridge: configuration error: ${err.message}\n`)
      process.exit(2)
    }
    throw err
  }
  const bridge = new Bridge(config, { logger: log })
  let stopping = false
  const stop = async (signal) => {
    if (stopping) return
    stopping = true
    log.info('stopping', { signal })
    const force = setTimeout(() => process.exit(1), 10_000)
    force.unref()
    try {
      await bridge.stop()
    } catch (err) {
      log.error('stop failed', { error: errorMessage(err) })
    }
    process.exit(0)
  }
  process.on('SIGINT', () => stop('SIGINT'))
  process.on('SIGTERM', () => stop('SIGTERM'))
  // A supervisor closing our stdin (e.g. a parent test or process group that died) stops us.
  if (process.env.HYPERTUNA_BRIDGE_EXIT_ON_STDIN_CLOSE === '1') {
    process.stdin.on('end', () => stop('stdin-closed'))
    process.stdin.resume()
  }

  const info = await bridge.start()
  log.info('ready', { ...info, rpc: bridge.listening })
  // One machine-readable line on stdout for supervisors and tests.
  process.stdout.write('HYPERTUNA_BRIDGE_READY ' + JSON.stringify({ ...info, rpc: bridge.listening, pid: process.pid }) + '\n')
}

main().catch((err) => {
  log.error('fatal', { error: errorMessage(err), stack: err && err.stack })
  process.exit(1)
})
