"""Every write to relays, registrations, peers and tokens, by concern:

- :mod:`relays.registration`: signed registrations, unregister, resync-complete, the TTL sweep;
- :mod:`relays.tokens`: client tokens (issue, verify, refresh, revoke);
- :mod:`relays.peers`: worker peer health;
- :mod:`relays.signing`: the registration secret, signed headers, the relay's channel-layer group.

Each service validates its input, writes in one transaction, and defers side effects to
``transaction.on_commit``. This module re-exports the public services so callers keep one import.
"""

from __future__ import annotations

from relays.peers import record_peer_health
from relays.registration import (
    expire_registrations,
    prune_registration_history,
    refresh_relay_cache,
    register_relay,
    resync_complete,
    unregister_relay,
)
from relays.signing import relay_group
from relays.tokens import (
    DEFAULT_SCOPE,
    IssuedToken,
    RevokeResult,
    TokenRejected,
    VerifiedToken,
    issue_token,
    refresh_token,
    revoke_token_by_id,
    revoke_tokens,
    verify_token,
)

__all__ = [
    "DEFAULT_SCOPE",
    "IssuedToken",
    "RevokeResult",
    "TokenRejected",
    "VerifiedToken",
    "expire_registrations",
    "issue_token",
    "prune_registration_history",
    "record_peer_health",
    "refresh_relay_cache",
    "refresh_token",
    "register_relay",
    "relay_group",
    "resync_complete",
    "revoke_token_by_id",
    "revoke_tokens",
    "unregister_relay",
    "verify_token",
]
