"""Events the gateway wrote under an escrow lease, visible before a worker linearizes them.

The bridge appends a leased write to the relay's Autobase, but the replica only learns of it when a worker
linearizes it into the view and the sync reads it back, which does not happen while every worker is
offline. So the accepted event is materialized into the replica at once, marked ``pending``: REQ and COUNT
answer it on every node and the fallback's poll delivers it to live subscribers on every node. The
replaceable, addressable and NIP-09 rules of ``materialize.materialize_events`` apply to it as to any other
event. When the view brings the same event, the sync flips the row to linearized (no second row, see
``materialize``).
"""

from __future__ import annotations

from django.db import transaction

from hypertuna.nostr import Event
from replicas.drives import note_leased_events
from replicas.materialize import materialize_events
from replicas.models import Replica
from replicas.readiness import replica_for


def store_leased_event(*, relay_key: str, event: Event) -> bool:
    """Materialize one event accepted under a lease into the relay's replica, as pending.

    Returns whether a row was inserted (False: already stored, an equal or newer version of its coordinate is
    retained, deleted, or ephemeral). Under the replica row lock, like a sync batch, so it never interleaves
    with one. A relay without a replica row gets one, exactly as the next sync run would create it
    (``begin_sync``): the event is already durable in the relay's Autobase, so refusing would only hide an
    accepted write from readers until then; the row's view core is linked when the mirror reports it.
    """
    with transaction.atomic():
        replica_for(relay_key)
        replica = Replica.objects.select_for_update().get(relay_key=relay_key)
        inserted, removed = materialize_events(replica, [(0, event)], pending=True)
        if inserted or removed:
            replica.event_count = max(0, replica.event_count + inserted - removed)
            replica.save(update_fields=["event_count", "updated_at"])
        if inserted:
            note_leased_events(relay_key, event.id)
    return inserted > 0
