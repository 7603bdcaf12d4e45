"""After the bridge (re)connects, the event consumer has it dial every worker the registry lists: a
restarted bridge knows none, and a worker no client uses would otherwise stay unreached."""

from __future__ import annotations

from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from hypertuna.bridge import BridgeError
from hypertuna.compat import hmac_hex
from relays import bridge_events, services
from relays.models import Relay
from tests.conftest import SECRET, hex_key, make_registration

pytestmark = pytest.mark.django_db(transaction=True)


class DialClient:
    def __init__(self, unreachable: set[str]) -> None:
        self.unreachable = unreachable
        self.dialled: list[str] = []

    async def peer_connect(self, peer_key: str, *, timeout_ms: int | None = None) -> dict:
        self.dialled.append(peer_key)
        if peer_key in self.unreachable:
            raise BridgeError("peer-unavailable", "Connection timeout")
        return {"peerKey": peer_key}


def register(relay_key: str, peers: list[str]) -> None:
    reg = make_registration(relay_key, peers=peers)
    services.register_relay(registration=reg, signature=hmac_hex(SECRET, reg))


def setup_registry() -> None:
    register(hex_key(), ["a" * 64, "b" * 64])
    register(hex_key(), ["b" * 64])
    # Marked unreachable while the bridge was away: still dialled, the bridge must find out.
    services.record_peer_health(peer_key="b" * 64, healthy=False)
    lapsed = hex_key()
    register(lapsed, ["c" * 64])
    Relay.objects.filter(relay_key=lapsed).update(expires_at=timezone.now() - timedelta(seconds=1))


async def test_redial_dials_every_registered_peer_of_live_relays_once():
    await sync_to_async(setup_registry)()
    client = DialClient(unreachable={"b" * 64})
    reached = await bridge_events.redial(client)  # type: ignore[arg-type]
    assert sorted(client.dialled) == ["a" * 64, "b" * 64]
    assert reached == 1
