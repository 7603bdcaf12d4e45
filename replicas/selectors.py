"""Reads: readiness, mirror evidence and summaries of the replicas (REQ answers: ``replicas/queries.py``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypedDict

from django.db.models import Count, F, Max, Q, QuerySet, Sum
from django.utils import timezone

from replicas.models import MirrorCore, Replica, ReplicaEvent
from replicas.readiness import derive_state, lag_ms

# --- readiness and mirror evidence ----------------------------------------------------------------------


class MirrorEvidence(TypedDict):
    """The escrow's mirror evidence for one relay (wire form in ``escrow/WIRE.md``)."""

    announcedAt: datetime
    announcedLength: int
    mirroredLength: int


def mirror_evidence(relay_key: str) -> MirrorEvidence | None:
    """The owner's last observed contact for the relay's view, and what the blind peer holds of it.

    Among the relay's active ``autobase-view`` cores, the one announced most recently: when its owner was
    last observed (``announced_at``: a live bridge report or a signed metadata push), the length it
    announced then, and the blind peer's contiguous length of that core now. ``None`` when no view core
    of the relay was ever announced. The escrow judges it against the worker's last signed contact, not
    the clock: complete (mirrored ≥ announced) and observed close enough to the worker's last contact.
    """
    core = (
        MirrorCore.objects.filter(
            relay_key=relay_key,
            core_type="autobase-view",
            state=MirrorCore.State.ACTIVE,
            announced_at__isnull=False,
        )
        .order_by("-announced_at", "core_key")
        .only("announced_at", "announced_length", "mirrored_length")
        .first()
    )
    if core is None or core.announced_at is None:
        return None
    return MirrorEvidence(
        announcedAt=core.announced_at, announcedLength=core.announced_length, mirroredLength=core.mirrored_length
    )


def has_replica(relay_key: str) -> bool:
    """Whether the relay has a replica to read from (one indexed lookup)."""
    return Replica.objects.filter(relay_key=relay_key).exists()


def replica_status(relay_key: str, *, now: datetime | None = None) -> dict[str, Any] | None:
    """Readiness of one relay's replica, with lag computed for ``now``; None if there is none."""
    replica = Replica.objects.filter(relay_key=relay_key).first()
    if replica is None:
        return None
    return replica_as_dict(replica, now=now)


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def replica_as_dict(
    replica: Replica, *, now: datetime | None = None, cores: list[MirrorCore] | None = None
) -> dict[str, Any]:
    now = now or timezone.now()
    out: dict[str, Any] = {
        "relayKey": replica.relay_key,
        "publicIdentifier": replica.public_identifier or None,
        "state": derive_state(replica, now),
        "viewCoreKey": replica.view_core_key or None,
        "materializedLength": replica.checkpoint_seq,
        "remoteLength": replica.remote_length,
        "syncedViewLength": replica.synced_view_length,
        "lagEntries": replica.lag_entries,
        "lagMs": lag_ms(replica, now),
        "behindSince": _iso(replica.behind_since),
        "caughtUpAt": _iso(replica.caught_up_at),
        "lastSyncedAt": _iso(replica.last_synced_at),
        "events": replica.event_count,
        "consecutiveFailures": replica.consecutive_failures,
        "lastError": replica.last_error or None,
        "mirrorEvidence": _evidence_as_dict(mirror_evidence(replica.relay_key)),
    }
    if cores is not None:
        out["cores"] = [core_as_dict(c) for c in cores]
    return out


def _evidence_as_dict(evidence: MirrorEvidence | None) -> dict[str, Any] | None:
    return None if evidence is None else {**evidence, "announcedAt": _iso(evidence["announcedAt"])}


def core_as_dict(core: MirrorCore) -> dict[str, Any]:
    return {
        "coreKey": core.core_key,
        "relayKey": core.relay_key or None,
        "type": core.core_type,
        "role": core.role or None,
        "declaredByRegistration": core.declared_by_registration,
        "ownerPeerKey": core.owner_peer_key or None,
        "announce": core.announce,
        "priority": core.priority,
        "mirroredLength": core.mirrored_length,
        "remoteLength": core.remote_length,
        "state": core.state,
        "lastActivityAt": _iso(core.last_activity_at),
        "caughtUpAt": _iso(core.caught_up_at),
        "behindSince": _iso(core.behind_since),
        "announcedLength": core.announced_length,
        "announcedAt": _iso(core.announced_at),
    }


def replicas_list(*, limit: int = 100, with_cores: bool = False, now: datetime | None = None) -> list[dict[str, Any]]:
    """Per-relay readiness for ``/api/blind-peer/replicas``: the most behind first, then by key."""
    # Longest-waiting first; caught-up replicas (no behind_since) last on every database.
    replicas = list(Replica.objects.order_by(F("behind_since").asc(nulls_last=True), "relay_key")[:limit])
    by_relay: dict[str, list[MirrorCore]] = {}
    if with_cores and replicas:
        for core in MirrorCore.objects.filter(relay_key__in=[r.relay_key for r in replicas]):
            by_relay.setdefault(core.relay_key, []).append(core)
    return [replica_as_dict(r, now=now, cores=by_relay.get(r.relay_key, []) if with_cores else None) for r in replicas]


def blind_peer_summary(*, now: datetime | None = None) -> dict[str, Any]:
    """Totals for ``/api/blind-peer``: mirrors by state/type, owners, replicas by state, worst lag."""
    now = now or timezone.now()
    mirrors = MirrorCore.objects.all()
    by_state = dict(mirrors.values_list("state").annotate(n=Count("id")).values_list("state", "n"))
    by_type = dict(
        mirrors.filter(state=MirrorCore.State.ACTIVE)
        .values_list("core_type")
        .annotate(n=Count("id"))
        .values_list("core_type", "n")
    )
    totals = mirrors.filter(state=MirrorCore.State.ACTIVE).aggregate(
        mirrored=Sum("mirrored_length"), last_activity=Max("last_activity_at")
    )
    replicas = list(Replica.objects.all())
    states: dict[str, int] = {}
    worst = 0
    for replica in replicas:
        state = derive_state(replica, now)
        states[state] = states.get(state, 0) + 1
        worst = max(worst, lag_ms(replica, now))
    return {
        "mirrors": {
            "total": sum(by_state.values()),
            "byState": by_state,
            "activeByType": by_type,
            "owners": mirrors.filter(state=MirrorCore.State.ACTIVE)
            .exclude(owner_peer_key="")
            .values("owner_peer_key")
            .distinct()
            .count(),
            "mirroredBlocks": totals["mirrored"] or 0,
            "lastActivityAt": _iso(totals["last_activity"]),
        },
        "replicas": {"total": len(replicas), "byState": states, "maxLagMs": worst},
    }


def replicas_behind(queryset: QuerySet[Replica], seconds: int, now: datetime | None = None) -> QuerySet[Replica]:
    """Replicas whose oldest unmaterialized entry has waited longer than ``seconds`` (SQL, for admin)."""
    from datetime import timedelta

    now = now or timezone.now()
    return queryset.filter(Q(behind_since__lt=now - timedelta(seconds=seconds)))


def pending_event_counts() -> dict[str, int]:
    """Events written under a lease that no worker has linearized yet, per relay (partial index
    ``replica_ev_pending``)."""
    rows = ReplicaEvent.objects.filter(pending=True).values_list("replica__relay_key").annotate(n=Count("id"))
    return dict(rows.values_list("replica__relay_key", "n"))
