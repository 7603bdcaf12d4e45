"""Host policy decision: may a registration with these owner identities be accepted?

Pure: takes the mode and the matching rules, returns a decision with a reason, no database access.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hypertuna.compat.relaykeys import HEX64


@dataclass(frozen=True)
class HostDecision:
    allowed: bool
    reason: str


def decide(mode: str, identities: set[str], rules: Mapping[str, set[str]]) -> HostDecision:
    blocked = identities & rules.get("block", set())
    allowed = identities & rules.get("allow", set())
    if mode == "allowlist":
        if allowed and not blocked:
            return HostDecision(True, "owner-allowlisted")
        return HostDecision(False, "owner-not-allowlisted" if not blocked else "owner-blocked")
    if blocked:  # open and blocklist modes both honour explicit blocks
        return HostDecision(False, "owner-blocked")
    return HostDecision(True, "open" if mode == "open" else "owner-not-blocked")


def owner_identities(registration: Mapping[str, Any]) -> set[str]:
    """Every identity a registration names for its owner: swarm keys, Nostr pubkey, the relay's npub."""
    raw_metadata = registration.get("metadata")
    metadata: Mapping[str, Any] = raw_metadata if isinstance(raw_metadata, dict) else {}
    raw_owner = metadata.get("owner")
    owner: Mapping[str, Any] = raw_owner if isinstance(raw_owner, dict) else {}
    candidates = [
        registration.get("ownerPeerKey"),
        metadata.get("ownerPeerKey"),
        owner.get("peerKey"),
        owner.get("pubkey"),
        metadata.get("ownerPubkey"),
    ]
    relay_key = registration.get("relayKey")
    if isinstance(relay_key, str) and relay_key.startswith("npub1") and ":" in relay_key:
        candidates.append(relay_key.split(":", 1)[0])
    identities = set()
    for value in candidates:
        if isinstance(value, str) and value:
            identities.add(value.lower() if HEX64.match(value.lower()) else value)
    return identities
