"""Replica readiness and real lag, and the link from a relay's view core to its replica.

**Lag** (reference §6.4 got this wrong: it reported time since activity). For a relay, ``remote_length``
is the longest view length known to exist (the worker's announced length, or what the blind peer holds,
whichever is larger) and ``checkpoint_seq`` is how much of it is materialized. ``lag entries =
remote_length - checkpoint_seq``. Every time a larger length is observed it is recorded with the time it
was first seen; ``behind_since`` is the first-seen time of the oldest length above the checkpoint, i.e.
when the oldest entry not yet materialized became known to exist, and ``lag ms = now - behind_since``
(0 when caught up). Time passing with nothing new to read is therefore not lag.

**A lost view.** When the blind peer drops the view core a replica reads (``mirror.removed``: its byte
budget, stale hygiene, an operator's drop) while the replica is behind, nothing more can be read from it:
the replica's ``last_error`` says so (``VIEW_LOST``) and its state is ``failed`` until an active view
core is linked again (the worker mirrors it anew) or the replica is caught up.
"""

from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.utils import timezone

from replicas.keys import from_ms, to_ms
from replicas.models import CoreType, MirrorCore, Replica

MAX_OBSERVATIONS = 256
VIEW_LOST = "view-core-removed:"


def observe_length(replica: Replica, length: int, at: datetime) -> None:
    """Record that the relay view is known to hold ``length`` blocks since ``at``."""
    if length <= replica.remote_length:
        return
    replica.remote_length = length
    observations = list(replica.length_observations or [])
    observations.append([length, to_ms(at)])
    # Bounded: merging the newest two keeps the earlier timestamp, so lag is over- never under-stated.
    while len(observations) > MAX_OBSERVATIONS:
        last = observations.pop()
        observations[-1] = [last[0], observations[-1][1]]
    replica.length_observations = observations


def refresh_lag(replica: Replica, now: datetime) -> None:
    """Recompute ``behind_since``/``caught_up_at`` and the state from lengths and the checkpoint."""
    checkpoint = replica.checkpoint_seq
    observations = [o for o in (replica.length_observations or []) if o[0] > checkpoint]
    replica.length_observations = observations
    if replica.remote_length > checkpoint:
        # Observations are ascending in length and time: the first one above the checkpoint dates the
        # oldest entry that is not materialized yet.
        replica.behind_since = from_ms(observations[0][1]) if observations else (replica.behind_since or now)
    else:
        replica.behind_since = None
        if replica.last_synced_at is not None:
            replica.caught_up_at = now
    replica.state = derive_state(replica, now)


def lag_ms(replica: Replica, now: datetime | None = None) -> int:
    if replica.behind_since is None or replica.remote_length <= replica.checkpoint_seq:
        return 0
    return max(0, to_ms(now or timezone.now()) - to_ms(replica.behind_since))


def view_lost(replica: Replica) -> bool:
    """The replica is behind and the view core it reads was removed from the blind peer."""
    return VIEW_LOST in (replica.last_error or "") and replica.remote_length > replica.checkpoint_seq


def derive_state(replica: Replica, now: datetime) -> str:
    if replica.consecutive_failures >= settings.HYPERTUNA_REPLICA_FAIL_AFTER or view_lost(replica):
        return Replica.State.FAILED
    if replica.last_synced_at is None:
        return Replica.State.PENDING
    if replica.remote_length <= replica.checkpoint_seq:
        return Replica.State.READY
    if lag_ms(replica, now) > settings.HYPERTUNA_REPLICA_STALE_AFTER * 1000:
        return Replica.State.STALE
    return Replica.State.SYNCING


def replica_for(relay_key: str, public_identifier: str = "") -> Replica:
    replica, created = Replica.objects.get_or_create(
        relay_key=relay_key, defaults={"public_identifier": public_identifier}
    )
    if not created and public_identifier and replica.public_identifier != public_identifier:
        replica.public_identifier = public_identifier
        replica.save(update_fields=["public_identifier", "updated_at"])
    return replica


def link_view_core(core: MirrorCore, now: datetime) -> None:
    """Point the relay's replica at ``core`` (an autobase-view core) and feed it the core's lengths."""
    if not core.relay_key or core.core_type != CoreType.AUTOBASE_VIEW or core.state != MirrorCore.State.ACTIVE:
        return
    replica_for(core.relay_key, core.public_identifier)
    replica = Replica.objects.select_for_update().get(relay_key=core.relay_key)
    if replica.view_core_key and replica.view_core_key != core.core_key:
        current = MirrorCore.objects.filter(core_key=replica.view_core_key, state=MirrorCore.State.ACTIVE).first()
        if current is not None and current.first_seen_at >= core.first_seen_at:
            # A late report about an older view core of the relay: it must not pull the replica back.
            return
    if replica.view_core_key != core.core_key:
        # A new view core (the indexer set changed, or the first one we hear of) has its own block
        # numbering: start over on it. Rows already materialized stay readable; re-reading is idempotent
        # and the rules are order-independent, so the visible set converges to the new view's.
        replica.view_core_key = core.core_key
        replica.checkpoint_seq = 0
        replica.remote_length = 0
        replica.length_observations = []
    if VIEW_LOST in replica.last_error:
        replica.last_error = ""  # the view is mirrored again
    observe_length(replica, max(core.remote_length, core.mirrored_length), now)
    refresh_lag(replica, now)
    replica.save()


def view_core_removed(core: MirrorCore, now: datetime) -> None:
    """``core`` was removed from the blind peer: if a replica reads it and is behind, say why it stops."""
    replica = Replica.objects.select_for_update().filter(view_core_key=core.core_key).first()
    if replica is None or replica.remote_length <= replica.checkpoint_seq:
        return
    replica.last_error = view_loss_message(replica, core.removal_reason)
    replica.last_error_at = now
    replica.state = derive_state(replica, now)
    replica.save()


def view_loss_message(replica: Replica, reason: str) -> str:
    return (
        f"{VIEW_LOST} the blind peer no longer holds view core {replica.view_core_key} ({reason or 'removed'}); "
        f"{replica.checkpoint_seq} of {replica.remote_length} blocks are materialized and no more can be read "
        "until its worker mirrors it again (drop the mirror so the next add starts from block 0)"
    )


def lost_view_error(relay_key: str) -> str | None:
    """Why a sync of ``relay_key`` cannot progress when its view core was removed (else None)."""
    replica = Replica.objects.filter(relay_key=relay_key).first()
    if replica is None or not replica.view_core_key or replica.remote_length <= replica.checkpoint_seq:
        return None
    core = MirrorCore.objects.filter(core_key=replica.view_core_key, state=MirrorCore.State.REMOVED).first()
    return None if core is None else view_loss_message(replica, core.removal_reason)


def refresh_states(*, now: datetime | None = None) -> int:
    """Re-derive the stored state of every replica (stale is a function of time). Returns changes."""
    now = now or timezone.now()
    changed = 0
    for replica in Replica.objects.all().iterator():
        state = derive_state(replica, now)
        if state != replica.state:
            Replica.objects.filter(pk=replica.pk).update(state=state)
            changed += 1
    return changed
