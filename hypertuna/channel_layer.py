"""The Redis channel layer with a connection pool that waits instead of failing.

channels-redis builds a plain redis-py pool, which in redis-py 8 holds at most 100 connections and raises
``MaxConnectionsError`` for the 101st concurrent command: a burst of WebSocket handshakes (each one a
``group_add``) then fails with HTTP 500s, and a mass disconnect loses ``group_discard`` calls, leaving stale
group members behind. This layer gives each shard a ``BlockingConnectionPool``: a command waits (up to
``pool_timeout`` seconds) for a free connection, so a burst is served in turn with a bounded number of
connections to Redis.
"""

from __future__ import annotations

from typing import Any

from channels_redis.core import RedisChannelLayer
from redis import asyncio as aioredis

DEFAULT_POOL_SIZE = 100
DEFAULT_POOL_TIMEOUT = 20.0


class GatewayChannelLayer(RedisChannelLayer):
    def create_pool(self, index: int) -> aioredis.ConnectionPool:
        host: dict[str, Any] = dict(self.hosts[index])
        if "address" not in host:  # sentinel and other forms: channels-redis's own pool
            return super().create_pool(index)
        address = host.pop("address")
        host.setdefault("max_connections", DEFAULT_POOL_SIZE)
        host.setdefault("timeout", DEFAULT_POOL_TIMEOUT)
        return aioredis.BlockingConnectionPool.from_url(address, **host)
