"""The unlock request as the policy sees it: parsing the gateway's body and building the policy snapshot.

Parsing refuses (400 ``invalid-request``) what no honest gateway sends and no ``datetime`` or database
column can hold: wrong types, negative or non-integer lengths, bools, values out of range. Well-formed
evidence that is merely untrue (a timestamp in the future) is left to the policy, which refuses it with
``mirror-evidence-invalid`` and an audit row, so forged evidence leaves a trace.

Wire form of the mirror evidence (``escrow/WIRE.md``)::

    "evidence": {"healthyPeers": 0,
                 "mirror": {"announcedAt": <unix s>, "announcedLength": n, "mirroredLength": m}}

The older ``"mirrorFreshAt": <unix s>`` is still accepted for one release: it becomes ``announcedAt``
with unknown lengths, which the policy takes as complete. When both are sent, ``mirror`` wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from escrow import crypto
from escrow.models import Deposit, WorkerBinding
from escrow.policy import MAX_LENGTH, DepositFacts, Evidence, MirrorEvidence, Policy, Snapshot
from hypertuna.compat.relaykeys import normalize_relay_key
from hypertuna.exceptions import ApiError

# Unix seconds the evidence may name: from the epoch to year 9999 (what a datetime can hold).
MAX_UNIX_SECONDS = 253402300799


def relay_key_param(value: object) -> str:
    relay_key = normalize_relay_key(value)
    if relay_key is None:
        raise ApiError("invalid-relay-key", "relayKey must be a 64-hex key or an npub…:name identifier.")
    return relay_key


@dataclass(frozen=True)
class UnlockRequest:
    relay_key: str
    session_public_key: bytes
    healthy_peers: int | None
    mirror: MirrorEvidence | None
    ttl: int | None


def _unix_seconds(value: object, name: str) -> datetime:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= MAX_UNIX_SECONDS:
        raise ApiError("invalid-request", f"{name} must be Unix seconds (0 to {MAX_UNIX_SECONDS}).")
    return datetime.fromtimestamp(value, tz=UTC)


def _length(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_LENGTH:
        raise ApiError("invalid-request", f"{name} must be an integer from 0 to {MAX_LENGTH}.")
    return value


def parse_mirror_evidence(evidence: dict[str, Any]) -> MirrorEvidence | None:
    """``evidence.mirror`` (or the older ``evidence.mirrorFreshAt``) as policy input; None when absent."""
    mirror = evidence.get("mirror")
    if mirror is not None:
        if not isinstance(mirror, dict):
            raise ApiError("invalid-request", "evidence.mirror must be an object.")
        missing = [k for k in ("announcedAt", "announcedLength", "mirroredLength") if mirror.get(k) is None]
        if missing:
            raise ApiError("invalid-request", f"evidence.mirror needs {', '.join(missing)}.")
        return MirrorEvidence(
            announced_at=_unix_seconds(mirror["announcedAt"], "evidence.mirror.announcedAt"),
            announced_length=_length(mirror["announcedLength"], "evidence.mirror.announcedLength"),
            mirrored_length=_length(mirror["mirroredLength"], "evidence.mirror.mirroredLength"),
        )
    fresh = evidence.get("mirrorFreshAt")
    if fresh is None:
        return None
    return MirrorEvidence(announced_at=_unix_seconds(fresh, "evidence.mirrorFreshAt"))


def parse_unlock(body: object) -> UnlockRequest:
    if not isinstance(body, dict):
        raise ApiError("invalid-request", "Body must be a JSON object.")
    try:
        session = crypto.b64decode(body.get("sessionPublicKey"), field="sessionPublicKey", length=crypto.KEY_BYTES)
    except crypto.CryptoError as exc:
        raise ApiError(exc.code, str(exc)) from None
    evidence = body.get("evidence") or {}
    if not isinstance(evidence, dict):
        raise ApiError("invalid-request", "evidence must be an object.")
    healthy = evidence.get("healthyPeers")
    if healthy is not None and (isinstance(healthy, bool) or not isinstance(healthy, int) or healthy < 0):
        raise ApiError("invalid-request", "evidence.healthyPeers must be a non-negative integer.")
    ttl = body.get("ttl")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 1):
        raise ApiError("invalid-request", "ttl must be a positive integer (seconds).")
    return UnlockRequest(
        relay_key=relay_key_param(body.get("relayKey")),
        session_public_key=session,
        healthy_peers=healthy,
        mirror=parse_mirror_evidence(evidence),
        ttl=ttl,
    )


def policy_snapshot(
    request: UnlockRequest,
    *,
    policy: Policy,
    binding: WorkerBinding | None,
    deposit: Deposit | None,
    escrow_key_id: str,
    now: datetime,
) -> Snapshot:
    """The policy's inputs: the escrow's own records (deposit, the worker's last signed contact) and the
    gateway's evidence."""
    return Snapshot(
        now=now,
        policy=policy,
        deposit=DepositFacts(
            state=deposit.state,
            expires_at=deposit.expires_at,
            allow_gateway_writes=deposit.allow_gateway_writes,
            policy_version=deposit.policy_version,
            sealed_to_current_key=deposit.escrow_key_id == escrow_key_id,
            created_at=deposit.created_at,
        )
        if deposit is not None
        else None,
        worker_last_seen_at=binding.last_seen_at if binding else None,
        rotation_required=binding.rotation_required if binding else False,
        evidence=Evidence(healthy_peers=request.healthy_peers, mirror=request.mirror),
    )
