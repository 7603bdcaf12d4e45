"""Operator console for mirrors, replica readiness (sync health), replica events and blind-peer actions.

Actions call services; dropping mirrors and GC go through a confirmation page. Replica events and the
action history are read-only.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib import admin, messages
from django.db.models import F, Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone

from hypertuna.admin_confirm import confirm_action
from replicas import services, tasks
from replicas.models import GatewayDrive, MirrorAction, MirrorCore, PendingWrite, Replica, ReplicaEvent


class ReadOnlyMixin:
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def _confirm(
    model_admin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet, *, action: str, title: str, warning: str
) -> TemplateResponse:
    return confirm_action(model_admin, request, queryset, action=action, title=title, warning=warning, ask_reason=True)


def _who(request: HttpRequest) -> str:
    return f"user:{request.user.get_username()}"


class ReplicaHealthFilter(admin.SimpleListFilter):
    title = "sync health"
    parameter_name = "health"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [
            ("stale", "Stale (behind longer than the stale threshold)"),
            ("lag-1m", "Lag over a minute"),
            ("failed", "Failed (sync keeps erroring)"),
            ("caught-up", "Caught up"),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Replica]) -> QuerySet[Replica]:
        now = timezone.now()
        value = self.value()
        # Lag is time-dependent, so the filters compare behind_since with now rather than trusting the
        # stored state (refreshed only periodically).
        if value == "stale":
            return queryset.filter(behind_since__lt=now - timedelta(seconds=settings.HYPERTUNA_REPLICA_STALE_AFTER))
        if value == "lag-1m":
            return queryset.filter(behind_since__lt=now - timedelta(minutes=1))
        if value == "failed":
            return queryset.filter(consecutive_failures__gte=settings.HYPERTUNA_REPLICA_FAIL_AFTER)
        if value == "caught-up":
            return queryset.filter(behind_since__isnull=True, last_synced_at__isnull=False)
        return queryset


class MirrorBehindFilter(admin.SimpleListFilter):
    title = "mirror progress"
    parameter_name = "progress"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("behind", "Blind peer behind the owner"), ("behind-1h", "Behind for more than an hour")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[MirrorCore]) -> QuerySet[MirrorCore]:
        if self.value() == "behind":
            return queryset.filter(behind_since__isnull=False)
        if self.value() == "behind-1h":
            return queryset.filter(behind_since__lt=timezone.now() - timedelta(hours=1))
        return queryset


class MirrorEvidenceFilter(admin.SimpleListFilter):
    """The escrow's mirror evidence per core: was everything the owner announced at its last observed
    contact mirrored (``mirror-incomplete`` otherwise)?"""

    title = "escrow mirror evidence"
    parameter_name = "evidence"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [
            ("complete", "Complete at the owner's last contact"),
            ("incomplete", "Behind what the owner announced"),
            ("none", "No contact observed"),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[MirrorCore]) -> QuerySet[MirrorCore]:
        announced = queryset.filter(announced_at__isnull=False)
        if self.value() == "complete":
            return announced.filter(mirrored_length__gte=F("announced_length"))
        if self.value() == "incomplete":
            return announced.filter(mirrored_length__lt=F("announced_length"))
        if self.value() == "none":
            return queryset.filter(announced_at__isnull=True)
        return queryset


@admin.register(MirrorCore)
class MirrorCoreAdmin(admin.ModelAdmin):
    list_display = (
        "core_key",
        "relay_key",
        "core_type",
        "role",
        "declared_by_registration",
        "state",
        "owner_peer_key",
        "announce",
        "priority",
        "mirrored_length",
        "remote_length",
        "announced_length",
        "announced_at",
        "last_activity_at",
    )
    list_filter = (
        "state",
        "core_type",
        "announce",
        MirrorBehindFilter,
        MirrorEvidenceFilter,
        "reported_by_worker",
        "declared_by_registration",
    )
    search_fields = ("core_key", "relay_key", "public_identifier", "owner_peer_key", "referrer", "role")
    readonly_fields = [f.name for f in MirrorCore._meta.fields]
    actions = ["drop_mirrors", "run_gc"]
    date_hierarchy = "last_activity_at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # mirrors come from the bridge and from signed worker metadata

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # deleting the row would not remove the core from the blind peer: use "drop"

    @admin.action(description="Drop the selected mirrors from the blind peer")
    def drop_mirrors(self, request: HttpRequest, queryset: QuerySet[MirrorCore]) -> HttpResponse | None:
        if request.POST.get("confirmed") != "yes":
            return _confirm(
                self,
                request,
                queryset,
                action="drop_mirrors",
                title="Drop these mirrors?",
                warning="The blind peer deletes these cores. Workers re-adding them mirror them again; "
                "materialized replica events are kept.",
            )
        reason = (request.POST.get("reason") or "operator")[:200]
        for core in queryset:
            services.request_drop(core_key=core.core_key, reason=reason, requested_by=_who(request))
        self.message_user(request, f"Drop requested for {queryset.count()} mirror(s).", messages.SUCCESS)
        return None

    @admin.action(description="Run blind-peer GC now")
    def run_gc(self, request: HttpRequest, queryset: QuerySet[MirrorCore]) -> HttpResponse | None:
        if request.POST.get("confirmed") != "yes":
            return _confirm(
                self,
                request,
                queryset.none(),
                action="run_gc",
                title="Run blind-peer GC?",
                warning="The blind peer evicts duplicate and stale cores by its hygiene rules.",
            )
        services.request_gc(reason=(request.POST.get("reason") or "operator")[:200], requested_by=_who(request))
        self.message_user(request, "GC requested.", messages.SUCCESS)
        return None


@admin.register(Replica)
class ReplicaAdmin(admin.ModelAdmin):
    list_display = (
        "__str__",
        "state",
        "lag_entries_display",
        "lag_display",
        "event_count",
        "checkpoint_seq",
        "remote_length",
        "last_synced_at",
        "consecutive_failures",
    )
    list_filter = (ReplicaHealthFilter, "state")
    search_fields = ("relay_key", "public_identifier", "view_core_key")
    readonly_fields = [f.name for f in Replica._meta.fields]
    actions = ["sync_now", "full_resync"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # a replica keeps a relay readable; it outlives its mirrors on purpose

    @admin.display(description="lag (entries)")
    def lag_entries_display(self, obj: Replica) -> int:
        return obj.lag_entries

    @admin.display(description="lag", ordering="behind_since")
    def lag_display(self, obj: Replica) -> str:
        ms = services.lag_ms(obj)
        return "—" if ms == 0 else str(timedelta(seconds=ms // 1000))

    @admin.action(description="Sync the selected replicas now")
    def sync_now(self, request: HttpRequest, queryset: QuerySet[Replica]) -> None:
        for key in queryset.values_list("relay_key", flat=True):
            tasks.sync_replica.delay(key)
        self.message_user(request, f"Sync enqueued for {queryset.count()} replica(s).", messages.SUCCESS)

    @admin.action(description="Re-read the selected replicas from block 0")
    def full_resync(self, request: HttpRequest, queryset: QuerySet[Replica]) -> HttpResponse | None:
        if request.POST.get("confirmed") != "yes":
            return _confirm(
                self,
                request,
                queryset,
                action="full_resync",
                title="Re-read these replicas?",
                warning="Each view is read again from its first block (rows stay readable meanwhile).",
            )
        for key in queryset.values_list("relay_key", flat=True):
            tasks.sync_replica.delay(key, True)
        self.message_user(request, f"Full resync enqueued for {queryset.count()} replica(s).", messages.SUCCESS)
        return None


@admin.register(ReplicaEvent)
class ReplicaEventAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ("event_id", "replica", "kind", "created_at", "author", "pending")
    list_select_related = ("replica",)
    list_filter = ("pending", "kind")
    search_fields = ("replica__relay_key",)
    show_full_result_count = False
    fields = ("event_id", "replica", "kind", "created_at", "author", "seq", "pending", "json")
    readonly_fields = fields

    @admin.display(description="id")
    def event_id(self, obj: ReplicaEvent) -> str:
        return bytes(obj.eid).hex()

    @admin.display(description="author")
    def author(self, obj: ReplicaEvent) -> str:
        return bytes(obj.pubkey).hex()

    def get_search_results(self, request: HttpRequest, queryset: QuerySet, search_term: str) -> tuple[QuerySet, bool]:
        term = search_term.strip().lower()
        if len(term) == 64 and all(c in "0123456789abcdef" for c in term):
            value = bytes.fromhex(term)
            return queryset.filter(Q(eid=value) | Q(pubkey=value)), False
        return super().get_search_results(request, queryset, search_term)


@admin.register(MirrorAction)
class MirrorActionAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ("requested_at", "action", "core_key", "status", "requested_by", "reason", "finished_at")
    list_filter = ("action", "status")
    search_fields = ("core_key", "requested_by", "reason")
    readonly_fields = [f.name for f in MirrorAction._meta.fields]


class PendingStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("open", "Pending (not cleared)"), ("unacked", "Not acknowledged by a worker"), ("cleared", "Cleared")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "open":
            return queryset.filter(cleared_at__isnull=True)
        if self.value() == "unacked":
            return queryset.filter(cleared_at__isnull=True, acknowledged_at__isnull=True)
        if self.value() == "cleared":
            return queryset.filter(cleared_at__isnull=False)
        return queryset


@admin.register(GatewayDrive)
class GatewayDriveAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ("relay_key", "drive_key", "version", "mirrored", "updated_at")
    list_filter = ("mirrored",)
    search_fields = ("relay_key", "drive_key", "identifier")


@admin.register(PendingWrite)
class PendingWriteAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ("relay_key", "write_type", "reference", "size", "created_at", "acknowledged_at", "cleared_at")
    list_filter = (PendingStateFilter, "write_type")
    search_fields = ("relay_key", "reference", "lease_id")
    date_hierarchy = "created_at"
