"""Connection burst: N simultaneous WebSocket connects to one relay over a Redis channel layer, then a mass
disconnect. Reports errors (handshakes refused, sockets told to come back later) and the group members
left in Redis afterwards; the goal is 0 and 0 for 2,000 connects.

Runs in one process through the gateway's real ASGI stack (middleware, consumer, channel layer) against a
private ``redis-server`` it starts and stops; workers are an in-memory stand-in answering at once, so the
figure is the gateway's and Redis's, not a worker's. ``python -m bench burst [N]``.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PEER = "4" * 64


class _InstantWorker:
    async def request(self, peer_key, method, path, *, headers, body, timeout):  # type: ignore[no-untyped-def]
        from relays.forwarding import PeerResponse

        frame = json.loads(json.loads(body)["message"]) if body else ["", ""]
        return PeerResponse(200, {}, json.dumps(["EOSE", frame[1]]).encode())


def _private_redis() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    return process, f"redis://127.0.0.1:{port}/0"


async def _burst(n: int, key: str, token: str, group_key: bytes, redis_url: str) -> dict[str, float]:
    import redis
    from channels.testing import WebsocketCommunicator

    from hypertuna.asgi import application

    clients = [WebsocketCommunicator(application, f"/{key}?token={token}") for _ in range(n)]
    started = time.monotonic()
    results = await asyncio.gather(*(c.connect(timeout=120) for c in clients), return_exceptions=True)
    opened = time.monotonic() - started
    refused = sum(1 for r in results if not (isinstance(r, tuple) and r[0]))
    await asyncio.gather(*(c.send_to(json.dumps(["REQ", "s", {}])) for c in clients))
    answers = await asyncio.gather(*(c.receive_from(timeout=120) for c in clients), return_exceptions=True)
    told_later = sum(1 for a in answers if not isinstance(a, str) or "try again later" in a)
    store = redis.Redis.from_url(redis_url)
    members_open = int(store.zcard(group_key))
    # A disconnect is given time to finish (as the ASGI server gives one time to end): a consumer cancelled
    # mid-disconnect never discards its group membership, which would be the harness's fault, not the layer's.
    await asyncio.gather(*(c.disconnect(timeout=120) for c in clients), return_exceptions=True)
    return {
        "connects": n,
        "refused": refused,
        "told_to_retry": told_later,
        "members_while_open": members_open,
        "stale_after_disconnect": int(store.zcard(group_key)),
        "burst_seconds": opened,
    }


def run(n: int = 2000) -> dict[str, float]:
    redis_process, redis_url = _private_redis()
    var_dir = Path(tempfile.mkdtemp(prefix="burst-bench-"))
    (var_dir / "bench").mkdir()
    try:
        os.environ["REDIS_URL"] = redis_url
        os.environ["HYPERTUNA_VAR_DIR"] = str(var_dir)
        os.environ["HYPERTUNA_REGISTRATION_SECRET"] = "burst-bench-secret-0123456789"
        os.environ["HYPERTUNA_BRIDGE_REQUIRED"] = "false"
        os.environ["HYPERTUNA_RATELIMIT_IP_PER_MINUTE"] = "0"
        os.environ["HYPERTUNA_RATELIMIT_TOKEN_PER_MINUTE"] = "0"
        from bench.replica_data import bench_database, setup_django

        setup_django()
        from django.conf import settings

        settings.CHANNEL_LAYERS["default"]["CONFIG"]["prefix"] = "burst"
        with bench_database(var_dir):
            from hypertuna.compat import hmac_hex
            from relays import services
            from relays.consumers import RelayConsumer
            from relays.models import Relay
            from relays.runtime import Runtime
            from relays.services import relay_group
            from tests.conftest import hex_key, make_registration

            RelayConsumer.transport_factory = staticmethod(_InstantWorker)  # type: ignore[assignment]
            Runtime.ensure_started = lambda self: None  # type: ignore[method-assign]
            key = hex_key()
            registration = make_registration(key, peers=[PEER], metadata={"requiresAuth": True})
            services.register_relay(
                registration=registration, signature=hmac_hex(settings.HYPERTUNA_REGISTRATION_SECRET, registration)
            )
            services.refresh_relay_cache(key)
            token = services.issue_token(relay_key=key, relay_auth_token="auth").token
            group_key = f"burst:group:{relay_group(Relay.objects.get(relay_key=key).id)}".encode()
            return asyncio.run(_burst(n, key, token, group_key, redis_url))
    finally:
        redis_process.kill()
        redis_process.wait()


def report(result: dict[str, float]) -> str:
    return (
        f"Connection burst ({int(result['connects'])} simultaneous connects, Redis channel layer)\n"
        f"  refused handshakes: {int(result['refused'])}   told to retry: {int(result['told_to_retry'])}\n"
        f"  group members while open: {int(result['members_while_open'])}   "
        f"stale after mass disconnect: {int(result['stale_after_disconnect'])}\n"
        f"  all open after {result['burst_seconds']:.1f} s"
    )


if __name__ == "__main__":
    print(report(run(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)))
