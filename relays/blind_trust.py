"""Which keys may mirror which relay's cores into the gateway's blind peer: decided here, applied by the
bridge (``bridge/src/blind/trust.mjs``).

A relay's **scope** is computed from signed state only:

- ``peerKeys``: the keys trusted to add its cores, while the relay is live (registered, not expired,
  not unregistered):
  - the ``blindPeeringPublicKey`` of each signed HTTP registration of the relay received within the
    registration TTL (and after the last unregister): real workers' blind-peering clients dial with
    that key, not with their swarm key;
  - the swarm key of each peer a signed registration lists (the reference worker mirrors with it);
  - the ``blindPeeringPublicKey`` such a listed peer announced in its own swarm registration.
- ``keys``: what counts as the relay's own: its key when it is 64-hex, and every core attributed to it
  (declared in its registrations' ``relayCores``, posted as mirror metadata, or mirrored with one of
  these as referrer). The bridge accepts an ``add-core`` whose referrer is one of them, or without
  referrer a core the relay declared (or that no relay declared).

A key announced by relay B's registration is in B's scope only, so it never reaches relay A's cores.
Unsigned input (a swarm registration of a peer no signed registration lists) grants nothing.

Python pushes a relay's scope when a registration commits (``relays.tasks.push_blind_peer_trust``),
withdraws it on unregister and on the TTL sweep, and the bridge event consumer reconciles the whole
table on every (re)connection and periodically, so a bridge restart or a missed call heals.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from hypertuna.compat.relaykeys import HEX64
from relays.models import Peer, Registration, Relay

logger = logging.getLogger(__name__)

#: Most own keys sent per relay (a relay declares at most a few hundred cores).
MAX_SCOPE_KEYS = 4096


def _live(now: datetime) -> Q:
    return Q(status=Relay.Status.ACTIVE, expires_at__gt=now)


def relay_scopes(relay_keys: Iterable[str] | None = None, *, now: datetime | None = None) -> list[dict[str, Any]]:
    """The scope of each live relay (all live relays when ``relay_keys`` is None). A listed relay that is
    not live, or has no trusted key, gets ``peerKeys: []`` so the bridge drops it."""
    from replicas.models import MirrorCore

    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.HYPERTUNA_REGISTRATION_TTL)
    relays = Relay.objects.filter(_live(now))
    wanted = None if relay_keys is None else sorted(set(relay_keys))
    if wanted is not None:
        relays = relays.filter(relay_key__in=wanted)
    live = {relay_id: key for relay_id, key in relays.values_list("pk", "relay_key")}
    peers: dict[str, set[str]] = {key: set() for key in live.values()}

    registrations = (
        Registration.objects.filter(relay_id__in=live, received_at__gte=cutoff)
        .exclude(blind_peering_key="")
        .values_list("relay_id", "blind_peering_key")
        .distinct()
    )
    for relay_id, key in registrations:
        peers[live[relay_id]].add(key)
    listed = Peer.objects.filter(relay_id__in=live, active=True, last_seen_at__gte=cutoff).values_list(
        "relay_id", "peer_key", "blind_peering_key"
    )
    for relay_id, peer_key, blind_key in listed:
        peers[live[relay_id]].add(peer_key)
        if blind_key:
            peers[live[relay_id]].add(blind_key)

    own: dict[str, set[str]] = {key: ({key} if HEX64.match(key) else set()) for key in live.values()}
    cores = (
        MirrorCore.objects.filter(relay_key__in=list(live.values()))
        .exclude(state=MirrorCore.State.REMOVED)
        .values_list("relay_key", "core_key")
    )
    for relay_key, core_key in cores:
        if len(own[relay_key]) < MAX_SCOPE_KEYS:
            own[relay_key].add(core_key)

    scopes = [{"relayKey": key, "peerKeys": sorted(peers[key]), "keys": sorted(own[key])} for key in sorted(peers)]
    for key in wanted or ():
        if key not in peers:
            scopes.append({"relayKey": key, "peerKeys": [], "keys": []})
    return scopes


def withdrawn_scopes(relay_keys: Iterable[str]) -> list[dict[str, Any]]:
    """Scopes that drop ``relay_keys`` from the bridge (their registration lapsed or was removed)."""
    return [{"relayKey": key, "peerKeys": [], "keys": []} for key in sorted(set(relay_keys))]


def relays_of_peer(peer_key: str, *, now: datetime | None = None) -> list[str]:
    """Live relays whose signed registrations list ``peer_key``."""
    now = now or timezone.now()
    return sorted(
        Peer.objects.filter(peer_key=peer_key, active=True, relay__status=Relay.Status.ACTIVE)
        .filter(relay__expires_at__gt=now)
        .values_list("relay__relay_key", flat=True)
    )


def record_swarm_blind_key(*, peer_key: str, blind_peering_key: str) -> list[str]:
    """A peer listed by signed registrations announced its blind-peering key in its swarm registration:
    remember it on the peer rows of its live relays. Returns those relays (nothing for an unlisted peer)."""
    relays = relays_of_peer(peer_key)
    if relays and blind_peering_key:
        Peer.objects.filter(peer_key=peer_key, relay__relay_key__in=relays).exclude(
            blind_peering_key=blind_peering_key
        ).update(blind_peering_key=blind_peering_key)
    return relays


async def push(client: Any, scopes: list[dict[str, Any]], *, replace_all: bool = False) -> dict[str, Any]:
    """Send scopes to the bridge (``blindPeer.trustRelays``); with ``replace_all`` every relay not listed
    is dropped there (the reconcile)."""
    result = await client.call("blindPeer.trustRelays", {"relays": scopes, "replaceAll": replace_all}, timeout_s=30)
    return result if isinstance(result, dict) else {}
