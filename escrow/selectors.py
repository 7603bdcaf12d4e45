"""Reads of escrow state (no writes, no key material in any return value)."""

from __future__ import annotations

import json
from typing import Any

from django.db.models import QuerySet
from django.utils import timezone

from escrow import crypto
from escrow.conf import current_policy
from escrow.keystore import escrow_keys
from escrow.models import Deposit, Lease, WorkerBinding


def policy_document() -> dict[str, Any]:
    """The published policy: global rules plus the escrow's public keys, signed with its Ed25519 key.

    Signed bytes: ``message("hypertuna/escrow/policy/v1", [canonical JSON of "policy"])`` where canonical
    JSON is sorted keys, no whitespace, ASCII.
    """
    keys = escrow_keys()
    document: dict[str, Any] = {
        **current_policy().as_wire(),
        "escrowPublicKey": keys.public_key.hex(),
        "escrowKeyId": keys.key_id,
        "verifyKey": keys.verify_key.hex(),
    }
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    signature = keys.sign(crypto.message(crypto.DOMAIN_POLICY, [canonical]))
    return {"policy": document, "signature": crypto.b64encode(signature)}


def active_leases() -> QuerySet[Lease]:
    return Lease.objects.filter(state=Lease.State.ACTIVE, expires_at__gt=timezone.now()).order_by("relay_key")


def lease_summary(lease: Lease) -> dict[str, Any]:
    return {
        "leaseId": str(lease.id),
        "relayKey": lease.relay_key,
        "fence": lease.fence,
        "state": lease.state,
        "issuedAt": int(lease.issued_at.timestamp()),
        "expiresAt": int(lease.expires_at.timestamp()),
        "requester": lease.requester,
    }


def relay_status(relay_key: str) -> dict[str, Any]:
    binding = WorkerBinding.objects.filter(relay_key=relay_key).first()
    deposit = Deposit.objects.filter(relay_key=relay_key, state=Deposit.State.ACTIVE).first()
    lease = Lease.objects.filter(relay_key=relay_key, state=Lease.State.ACTIVE).first()
    return {
        "relayKey": relay_key,
        "bound": binding is not None,
        "rotationRequired": bool(binding and binding.rotation_required),
        "lastSeenAt": int(binding.last_seen_at.timestamp()) if binding else None,
        "depositId": str(deposit.id) if deposit else None,
        "depositExpiresAt": int(deposit.expires_at.timestamp()) if deposit else None,
        "lease": lease_summary(lease) if lease else None,
    }
