"""The network guard that every worker runtime process of the suite runs under can fail: it refuses each
kind of non-loopback attempt before anything leaves the machine, reports it, and puts every DHT on the
given testnet. (The targets below are never contacted: the guard throws before the call reaches the OS.)"""

from __future__ import annotations

import json
import subprocess

from tests.interop.realworker import INTEROP_DIR

PROBE = r"""
const net = require('node:net')
const dns = require('node:dns')
const report = (name, fn) => {
  try { fn(); console.log(JSON.stringify({ name, refused: false })) }
  catch (e) { console.log(JSON.stringify({ name, refused: e.code === 'EINTEROPGUARD' })) }
}
report('dns', () => dns.lookup('relay.example.org', () => {}))
report('tcp', () => net.connect(443, '192.0.2.10').on('error', () => {}))
report('tcp-loopback', () => net.connect(9, '127.0.0.1').on('error', () => {}))
const UDX = require('udx-native')
const udx = new UDX()
const sock = udx.createSocket()
sock.bind(0)
report('udp-bound-loopback', () => { if (sock.address().host !== '127.0.0.1') throw new Error('bound ' + sock.address().host) })
report('udp', () => sock.trySend(Buffer.from('x'), 49737, '198.51.100.7'))
const HyperDHT = require('hyperdht')
console.log(JSON.stringify({ name: 'bootstrap', list: HyperDHT.BOOTSTRAP }))
sock.close()
Promise.reject(new Error('boom'))
"""


def _run():
    return subprocess.run(
        ["node", "--require", "./guard.cjs", "-e", PROBE],
        cwd=INTEROP_DIR,
        env={"PATH": "/usr/bin:/bin:/usr/local/bin", "HYPERTUNA_INTEROP_BOOTSTRAP": "127.0.0.1:49999"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_guard_refuses_and_reports_every_non_loopback_attempt(runtime):
    result = _run()
    lines = result.stdout.splitlines()
    reports = {json.loads(line)["name"]: json.loads(line) for line in lines if line.startswith("{")}
    violations = [json.loads(line.split(" ", 1)[1]) for line in lines if line.startswith("HYPERTUNA_INTEROP_VIOLATION")]
    assert reports["dns"]["refused"] and reports["tcp"]["refused"] and reports["udp"]["refused"], lines
    assert not reports["tcp-loopback"]["refused"]
    assert not reports["udp-bound-loopback"]["refused"], "a wildcard bind must become 127.0.0.1"
    assert {v["kind"] for v in violations} == {"dns-lookup", "tcp-connect", "udp-send"}
    assert reports["bootstrap"]["list"] == ["127.0.0.1:49999"]


def test_unhandled_rejection_kills_the_process_as_the_desktop_host_does(runtime):
    result = _run()
    assert result.returncode == 70
    fatal = [line for line in result.stdout.splitlines() if line.startswith("HYPERTUNA_INTEROP_FATAL")]
    assert fatal and json.loads(fatal[0].split(" ", 1)[1])["message"] == "boom"


def test_guard_refuses_to_start_on_a_non_loopback_bootstrap(runtime):
    result = subprocess.run(
        ["node", "--require", "./guard.cjs", "-e", "console.log('started')"],
        cwd=INTEROP_DIR,
        env={"PATH": "/usr/bin:/bin:/usr/local/bin", "HYPERTUNA_INTEROP_BOOTSTRAP": "88.99.3.86:49737"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "started" not in result.stdout
