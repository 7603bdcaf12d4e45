from __future__ import annotations

import asyncio
import signal
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from hypertuna.bridge import BridgeClient
from relays import bridge_events


class Command(BaseCommand):
    help = "Consume the local bridge's events (peer health, worker Hyperswarm registrations) until stopped."

    def handle(self, *args: Any, **options: Any) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        client = BridgeClient(
            socket_path=settings.HYPERTUNA_BRIDGE_SOCKET,
            secret=settings.HYPERTUNA_BRIDGE_SECRET,
            client_name="gateway-events",
            subscribe=bridge_events.TOPICS,
        )
        self.stdout.write("consuming bridge events")
        try:
            await bridge_events.run(client, stop=stop)
        finally:
            await client.close()
