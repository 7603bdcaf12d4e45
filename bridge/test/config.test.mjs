import test from 'node:test'
import assert from 'node:assert/strict'
import { loadBridgeConfig, ConfigError } from '../src/config.mjs'

test('defaults: local testnet, socket under ./var, 30 s health sweep', () => {
  const cfg = loadBridgeConfig({}, '/srv/gw')
  assert.equal(cfg.bootstrap.mode, 'local')
  assert.equal(cfg.testnetNodes, 4)
  assert.equal(cfg.socketPath, '/srv/gw/var/bridge.sock')
  assert.equal(cfg.bootstrapFile, '/srv/gw/var/swarm.json')
  assert.equal(cfg.tcp, null)
  assert.equal(cfg.pool.healthIntervalMs, 30_000)
  assert.equal(cfg.registerTimeoutMs, 10_000)
  assert.equal(cfg.publicUrl, null)
})

test('bad values fail at start with the variable named', () => {
  const bad = [
    [{ HYPERTUNA_BRIDGE_TCP: '0.0.0.0:7000', HYPERTUNA_BRIDGE_SECRET: 's' }, /loopback/],
    [{ HYPERTUNA_BRIDGE_TCP: '127.0.0.1:7000' }, /HYPERTUNA_BRIDGE_SECRET/],
    [{ HYPERTUNA_SWARM_SEED: 'abc' }, /HYPERTUNA_SWARM_SEED/],
    [{ HYPERTUNA_SWARM_TESTNET_NODES: '3' }, /HYPERTUNA_SWARM_TESTNET_NODES/],
    [{ HYPERTUNA_BRIDGE_HEALTH_INTERVAL_MS: 'soon' }, /HYPERTUNA_BRIDGE_HEALTH_INTERVAL_MS/],
    [{ HYPERTUNA_SWARM_BOOTSTRAP: 'not-a-node' }, /HYPERTUNA_SWARM_BOOTSTRAP/],
    [{ HYPERTUNA_PUBLIC_URL: 'relative/path' }, /HYPERTUNA_PUBLIC_URL/],
    [{ HYPERTUNA_BRIDGE_SOCKET: 'off' }, /no RPC transport/]
  ]
  for (const [env, re] of bad) assert.throws(() => loadBridgeConfig(env, '/x'), (e) => e instanceof ConfigError && re.test(e.message), JSON.stringify(env))
})

test('explicit lists, TCP with a secret and the public URL are taken as given', () => {
  const cfg = loadBridgeConfig({
    HYPERTUNA_SWARM_BOOTSTRAP: '127.0.0.1:49737,127.0.0.1:49738',
    HYPERTUNA_BRIDGE_TCP: '127.0.0.1:7411',
    HYPERTUNA_BRIDGE_SECRET: 'k',
    HYPERTUNA_BRIDGE_SOCKET: 'off',
    HYPERTUNA_PUBLIC_URL: 'https://gw.example.test/',
    HYPERTUNA_SWARM_TESTNET_NODES: '6'
  }, '/x')
  assert.equal(cfg.bootstrap.mode, 'list')
  assert.equal(cfg.bootstrap.nodes.length, 2)
  assert.deepEqual(cfg.tcp, { host: '127.0.0.1', port: 7411 })
  assert.equal(cfg.socketPath, null)
  assert.equal(cfg.publicUrl, 'https://gw.example.test')
  assert.equal(cfg.gatewayOrigin, 'https://gw.example.test')
  assert.equal(cfg.testnetNodes, 6)
})
