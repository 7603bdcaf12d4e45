"""Operator console for the escrow: bindings, deposits, leases (revoke with confirmation), audit log.

No key material is shown anywhere: deposits hold only a sealed box and it is not among the fields; the
audit log and checkpoints are read-only (the database refuses changes anyway). The global policy is shown
on the deposit and lease lists. Actions call services, so every revoke is audited like any other.

Where the records come from: a gateway with ``HYPERTUNA_ESCROW_URL`` (``make run``, compose) shows the
escrow's deposits, leases, audit entries and verifications read from the escrow itself over mutual TLS
(``escrow.admin_remote``; the escrow role keeps its own database), read-only; revocations then go through
``manage.py escrow_relay`` on the escrow. Without one, the admin shows this process's own escrow tables.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from escrow import admin_remote, leases
from escrow.conf import current_policy
from escrow.models import AuditCheckpoint, AuditEntry, AuditVerification, Deposit, Lease, WorkerBinding
from hypertuna.admin_confirm import confirm_action


def _actor(request: HttpRequest) -> str:
    return f"operator:{getattr(request.user, 'username', 'staff')}"


def _confirm(
    model_admin: admin.ModelAdmin, request: HttpRequest, queryset: QuerySet, *, action: str, title: str, warning: str
) -> TemplateResponse:
    return confirm_action(
        model_admin,
        request,
        queryset,
        action=action,
        title=title,
        warning=warning,
        confirm_label="Yes, revoke",
        empty_message="None of the selected items is active; nothing to revoke.",
    )


class _ReadOnly(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class _RemoteRows(_ReadOnly):
    """A list that shows the escrow's own records (``escrow.admin_remote``) when they live elsewhere."""

    remote_kind = ""
    # Filter links of the remote list: (label, query string).
    remote_filters: tuple[tuple[str, str], ...] = ()

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        if not admin_remote.is_remote():
            return super().changelist_view(request, extra_context=extra_context)
        # The local filters' parameter names (state__exact=…) name the same fields remotely.
        params = {key.removesuffix("__exact"): str(value) for key, value in request.GET.items()}
        error, rows = "", []
        try:
            rows = admin_remote.fetch(self.remote_kind, params)
        except admin_remote.EscrowUnreachable as exc:
            error = str(exc)
        columns = list(rows[0]) if rows else []
        return TemplateResponse(
            request,
            "admin/escrow/remote_list.html",
            {
                **self.admin_site.each_context(request),
                **(extra_context or {}),
                "title": f"{self.model._meta.verbose_name_plural.capitalize()} at the escrow",
                "opts": self.model._meta,
                "columns": columns,
                "rows": [[row.get(c) for c in columns] for row in rows],
                "error": error,
                "filters": self.remote_filters,
                "limit": admin_remote.LIMIT,
            },
        )


class _WithPolicy(_RemoteRows):
    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        extra_context = {**(extra_context or {}), "escrow_policy": current_policy().as_wire()}
        return super().changelist_view(request, extra_context=extra_context)


class SilenceFilter(admin.SimpleListFilter):
    title = "worker silence"
    parameter_name = "silence"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("silent", "Silent longer than the policy allows (unlock possible)"), ("alive", "Recently heard")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[WorkerBinding]) -> QuerySet[WorkerBinding]:
        cutoff = timezone.now() - timedelta(seconds=current_policy().heartbeat_silence)
        if self.value() == "silent":
            return queryset.filter(last_seen_at__lte=cutoff)
        if self.value() == "alive":
            return queryset.filter(last_seen_at__gt=cutoff)
        return queryset


@admin.register(WorkerBinding)
class WorkerBindingAdmin(_ReadOnly):
    list_display = (
        "relay_key",
        "short_worker_key",
        "owner_identity",
        "last_seen_at",
        "last_heartbeat_at",
        "rotation_required",
        "fence",
    )
    list_filter = (SilenceFilter, "rotation_required")
    search_fields = ("relay_key", "worker_key", "owner_identity")

    @admin.display(description="worker key")
    def short_worker_key(self, obj: WorkerBinding) -> str:
        return f"{obj.worker_key[:16]}…"


class UsableFilter(admin.SimpleListFilter):
    title = "lease"
    parameter_name = "usable"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Lease active (unexpired)"), ("no", "Ended or lapsed")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Lease]) -> QuerySet[Lease]:
        now = timezone.now()
        if self.value() == "yes":
            return queryset.filter(state=Lease.State.ACTIVE, expires_at__gt=now)
        if self.value() == "no":
            return queryset.exclude(state=Lease.State.ACTIVE, expires_at__gt=now)
        return queryset


@admin.register(Deposit)
class DepositAdmin(_WithPolicy):
    remote_kind = "deposits"
    remote_filters = (("All", ""), ("Active", "state=active"), ("Revoked", "state=revoked"))
    list_display = (
        "relay_key",
        "state",
        "short_writer_key",
        "allow_gateway_writes",
        "policy_version",
        "created_at",
        "expires_at",
        "released_at",
    )
    list_filter = ("state", "allow_gateway_writes", ("released_at", admin.EmptyFieldListFilter), "policy_version")
    search_fields = ("relay_key", "writer_public_key", "worker_key", "owner_identity")
    # sealed_secret is deliberately absent: the admin never renders key material, sealed or not.
    fields = (
        "id",
        "relay_key",
        "worker_key",
        "owner_identity",
        "writer_public_key",
        "escrow_key_id",
        "policy_version",
        "allow_gateway_writes",
        "issued_at",
        "expires_at",
        "created_at",
        "state",
        "ended_at",
        "end_reason",
        "released_at",
    )
    readonly_fields = fields
    actions = ["revoke_deposits"]
    date_hierarchy = "created_at"

    @admin.display(description="writer key")
    def short_writer_key(self, obj: Deposit) -> str:
        return f"{obj.writer_public_key[:16]}…"

    @admin.action(description="Revoke the selected deposits (and any lease on them)")
    def revoke_deposits(self, request: HttpRequest, queryset: QuerySet[Deposit]) -> HttpResponse | None:
        queryset = queryset.filter(state=Deposit.State.ACTIVE)
        if request.POST.get("confirmed") != "yes":
            return _confirm(
                self,
                request,
                queryset,
                action="revoke_deposits",
                title="Revoke these deposits?",
                warning="The writer keys can never be unlocked again; each worker must deposit anew.",
            )
        for deposit in queryset:
            leases.revoke(
                relay_key=deposit.relay_key, actor=_actor(request), reason="operator-revoke", revoke_deposit=True
            )
        self.message_user(request, f"Revoked {len(queryset)} deposit(s).", messages.SUCCESS)
        return None


@admin.register(Lease)
class LeaseAdmin(_WithPolicy):
    remote_kind = "leases"
    remote_filters = (("All", ""), ("Active (unexpired)", "usable=yes"), ("Revoked", "state=revoked"))
    list_display = ("relay_key", "state", "fence", "requester", "issued_at", "expires_at", "renewals", "end_reason")
    list_filter = (UsableFilter, "state", "end_reason")
    list_select_related = ("deposit",)
    search_fields = ("id", "relay_key", "requester")
    fields = (
        "id",
        "relay_key",
        "deposit",
        "fence",
        "requester",
        "session_key_hash",
        "issued_at",
        "expires_at",
        "max_expires_at",
        "renewals",
        "state",
        "ended_at",
        "end_reason",
        "evidence",
    )
    readonly_fields = fields
    actions = ["revoke_leases"]
    date_hierarchy = "issued_at"

    @admin.action(description="Revoke the selected leases")
    def revoke_leases(self, request: HttpRequest, queryset: QuerySet[Lease]) -> HttpResponse | None:
        queryset = queryset.filter(state=Lease.State.ACTIVE)
        if request.POST.get("confirmed") != "yes":
            return _confirm(
                self,
                request,
                queryset,
                action="revoke_leases",
                title="Revoke these leases?",
                warning="The gateway stops writing for these relays within its confirm interval.",
            )
        for lease in queryset:
            leases.revoke_lease_by_id(lease_id=str(lease.id), actor=_actor(request), reason="operator-revoke")
        self.message_user(request, f"Revoked {len(queryset)} lease(s).", messages.SUCCESS)
        return None


@admin.register(AuditEntry)
class AuditEntryAdmin(_RemoteRows):
    remote_kind = "audit"
    remote_filters = (
        ("All", ""),
        ("Unlocks granted", "action=unlock-granted"),
        ("Unlocks refused", "action=unlock-refused"),
        ("Revocations", "action=revoke"),
    )
    list_display = ("seq", "occurred_at", "action", "actor", "relay_key", "lease_id", "reason")
    list_filter = ("action", "occurred_at")
    search_fields = ("relay_key", "lease_id", "deposit_id", "actor", "reason")
    date_hierarchy = "occurred_at"
    readonly_fields = (
        "seq",
        "occurred_at",
        "action",
        "actor",
        "relay_key",
        "lease_id",
        "deposit_id",
        "reason",
        "policy_inputs",
        "details",
        "prev_hash",
        "entry_hash",
    )

    @admin.display(description="policy inputs")
    def policy_inputs(self, obj: AuditEntry) -> str:
        """The inputs an unlock decision was judged on (each rule and its inputs: runbook, escrow §3)."""
        inputs = obj.details.get("inputs") if isinstance(obj.details, dict) else None
        if not isinstance(inputs, dict):
            return "–"
        rows = format_html_join("", "<tr><th>{}</th><td>{}</td></tr>", sorted(inputs.items()))
        return format_html("<table>{}</table>", rows)


@admin.register(AuditCheckpoint)
class AuditCheckpointAdmin(_ReadOnly):
    list_display = ("seq", "entry_hash", "signed_at", "key_id")


@admin.register(AuditVerification)
class AuditVerificationAdmin(_RemoteRows):
    remote_kind = "verifications"
    list_display = ("ran_at", "ok", "entries", "checkpoints", "first_bad_seq", "problem")
    list_filter = ("ok",)
