"""Consume the bridge's ``mirror.*`` events and record them (runs until interrupted)."""

from __future__ import annotations

import asyncio
from typing import Any

from asgiref.sync import sync_to_async
from django.core.management.base import BaseCommand

from replicas import blindpeer
from replicas.events import TOPICS, handle_bridge_event


class Command(BaseCommand):
    help = "Record blind-peer mirror events pushed by the bridge (mirror.added/removed/progress)."

    def handle(self, *args: Any, **options: Any) -> None:
        asyncio.run(self._listen())

    async def _listen(self) -> None:
        client = blindpeer.bridge_client()
        client.reconnect = True
        async with client, client.events(*TOPICS) as events:
            async for event in events:
                await sync_to_async(handle_bridge_event)(event.name, event.data)
