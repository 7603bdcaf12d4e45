"""Operator console for relays, registrations, peers, tokens and the host policy.

Actions call services; dangerous ones (token revocation) go through a confirmation page.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from django.contrib import admin, messages
from django.db.models import Max, OuterRef, QuerySet, Subquery
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from hypertuna.admin_confirm import confirm_action
from hypertuna.exceptions import ApiError
from relays import dashboard, paths, selectors, services, stats
from relays.models import HostPolicy, HostRule, PathReassignment, Peer, Registration, Relay, RelayPath, RelayToken


class OfflineFilter(admin.SimpleListFilter):
    title = "registration"
    parameter_name = "registration"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [
            ("live", "Live (within TTL)"),
            ("lapsed", "Lapsed (TTL ran out)"),
            ("offline-1h", "Offline for more than an hour"),
            ("offline-1d", "Offline for more than a day"),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Relay]) -> QuerySet[Relay]:
        now = timezone.now()
        value = self.value()
        if value == "live":
            return queryset.filter(status=Relay.Status.ACTIVE, expires_at__gt=now)
        if value == "lapsed":
            return queryset.filter(expires_at__lte=now)
        if value == "offline-1h":
            return queryset.filter(last_registered_at__lt=now - timedelta(hours=1))
        if value == "offline-1d":
            return queryset.filter(last_registered_at__lt=now - timedelta(days=1))
        return queryset


class HealthFilter(admin.SimpleListFilter):
    """The dashboard's relay health (``relays.dashboard``): online, or offline and then read-only or leased."""

    title = "health"
    parameter_name = "health"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [
            (dashboard.ONLINE, "Online (a reachable peer)"),
            (dashboard.OFFLINE, "Offline"),
            (dashboard.READ_ONLY, "Offline, read-only from a replica"),
            (dashboard.LEASED, "Offline, writable under a lease"),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Relay]) -> QuerySet[Relay]:
        value = self.value()
        if not value:
            return queryset
        leased = dashboard.leased_relays() if value != dashboard.ONLINE else set()
        return dashboard.filter_health(queryset, value, leased)


class PeerInline(admin.TabularInline):
    model = Peer
    extra = 0
    can_delete = False
    fields = (
        "peer_key",
        "active",
        "last_seen_at",
        "last_healthy_at",
        "unreachable_since",
        "latency_ms",
        "blind_peering_key",
    )
    readonly_fields = fields


@admin.register(Relay)
class RelayAdmin(admin.ModelAdmin):
    list_display = (
        "__str__",
        "name",
        "status",
        "requires_auth",
        "peer_count",
        "active_token_count",
        "health",
        "replica_state",
        "lease",
        "live_sessions",
        "last_registered_at",
        "expires_at",
    )
    list_filter = (HealthFilter, OfflineFilter, "status", "requires_auth")
    search_fields = ("relay_key", "public_identifier", "gateway_path", "name", "owner_peer_key")
    readonly_fields = (
        "relay_key",
        "public_identifier",
        "gateway_path",
        "owner_peer_key",
        "first_registered_at",
        "last_registered_at",
        "expires_at",
        "unregistered_at",
        "token_sequence",
        "revoked_through_sequence",
        "metadata",
        "escrow",
        "connected_now",
    )
    inlines = [PeerInline]
    actions = ["revoke_all_tokens"]
    # The page reads the escrow's leases once; the unfiltered total is not worth a second count.
    show_full_result_count = False
    date_hierarchy = "last_registered_at"

    def get_queryset(self, request: HttpRequest) -> QuerySet[Relay]:
        from replicas.models import Replica

        now = timezone.now()
        online = Relay.objects.filter(dashboard.online_q(now)).values("pk")
        return selectors.relays_with_counts().annotate(
            last_healthy_at=Max("peers__last_healthy_at"),
            replica_state_value=Subquery(Replica.objects.filter(relay_key=OuterRef("relay_key")).values("state")[:1]),
            online_pk=Subquery(online.filter(pk=OuterRef("pk"))[:1]),
        )

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        # One escrow read and one live-sessions read per page, not per row.
        self._leased = dashboard.leased_relays()
        self._sessions = stats.sessions_by_relay(stats.live_sessions())
        return super().changelist_view(request, extra_context=extra_context)

    @admin.display(description="health")
    def health(self, obj: Relay) -> str:
        if obj.online_pk is not None:  # type: ignore[attr-defined]
            return "online"
        since = obj.last_healthy_at or obj.last_registered_at  # type: ignore[attr-defined]
        return f"offline since {timezone.localtime(since):%Y-%m-%d %H:%M}"

    @admin.display(description="replica")
    def replica_state(self, obj: Relay) -> str:
        return obj.replica_state_value or "–"  # type: ignore[attr-defined]

    @admin.display(description="lease", boolean=True)
    def lease(self, obj: Relay) -> bool:
        return obj.relay_key in getattr(self, "_leased", set())

    @admin.display(description="sessions")
    def live_sessions(self, obj: Relay) -> int:
        return getattr(self, "_sessions", {}).get(obj.relay_key, 0)

    @admin.display(description="connected now")
    def connected_now(self, obj: Relay) -> str:
        """The relay's open client sessions on every node (token, address, since, frames in/out)."""
        rows = [s for s in stats.live_sessions() if s["relay"] == obj.relay_key]
        if not rows:
            return "No client is connected."
        cells = format_html_join(
            "",
            "<tr data-session><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    _token_link(s["token"]),
                    s["address"],
                    f"{datetime.fromtimestamp(s['since'], tz=UTC):%Y-%m-%d %H:%M:%S} UTC",
                    s["framesIn"],
                    s["framesOut"],
                    s["node"],
                )
                for s in rows
            ),
        )
        head = "<tr><th>token</th><th>address</th><th>since</th><th>frames in</th><th>frames out</th><th>node</th></tr>"
        return format_html("<table>" + head + "{}</table>", cells)

    @admin.display(description="peers", ordering="peer_count")
    def peer_count(self, obj: Relay) -> int:
        return obj.peer_count  # type: ignore[attr-defined]

    @admin.display(description="active tokens", ordering="active_token_count")
    def active_token_count(self, obj: Relay) -> int:
        return obj.active_token_count  # type: ignore[attr-defined]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # relays come from signed worker registrations only

    @admin.action(description="Revoke every token of the selected relays (closes their sockets)")
    def revoke_all_tokens(self, request: HttpRequest, queryset: QuerySet[Relay]) -> HttpResponse | None:
        if request.POST.get("confirmed") != "yes":
            return confirm_action(
                self,
                request,
                list(queryset),
                action="revoke_all_tokens",
                title="Revoke every token of these relays?",
                warning="Every client connected with one of these tokens is disconnected (4403).",
            )
        total = 0
        for relay in queryset:
            total += services.revoke_tokens(relay_key=relay.relay_key, reason="operator").revoked
        self.message_user(request, f"Revoked {total} token(s).", messages.SUCCESS)
        return None


def _token_link(token_id: int | None) -> str:
    if token_id is None:
        return "(no token)"
    url = reverse("admin:relays_relaytoken_change", args=[token_id])
    return format_html('<a href="{}">#{}</a>', url, token_id)


@admin.register(Registration)
class RegistrationAdmin(admin.ModelAdmin):
    list_display = ("relay", "received_at", "issued_at", "nonce", "peer_count", "blind_peering_key", "client_ip")
    list_select_related = ("relay",)
    list_filter = ("received_at",)
    search_fields = ("relay__relay_key", "nonce", "client_ip", "blind_peering_key")
    date_hierarchy = "received_at"

    @admin.display(description="peers")
    def peer_count(self, obj: Registration) -> int:
        return len(obj.peers)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Peer)
class PeerAdmin(admin.ModelAdmin):
    list_display = ("peer_key", "relay", "active", "last_seen_at", "last_healthy_at", "unreachable_since", "latency_ms")
    list_select_related = ("relay",)
    list_filter = ("active", ("unreachable_since", admin.EmptyFieldListFilter))
    search_fields = ("peer_key", "relay__relay_key", "blind_peering_key")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(RelayToken)
class RelayTokenAdmin(admin.ModelAdmin):
    list_display = (
        "sequence",
        "relay",
        "state",
        "pubkey",
        "scope",
        "issued_at",
        "expires_at",
        "connections",
        "frames",
        "bytes_in",
        "bytes_out",
        "last_used_at",
    )
    list_select_related = ("relay",)
    list_filter = ("state", "scope", "issued_at")
    search_fields = ("relay__relay_key", "pubkey", "digest")
    readonly_fields = [f.name for f in RelayToken._meta.fields]
    actions = ["revoke_tokens"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Revoke the selected tokens (closes their sockets)")
    def revoke_tokens(self, request: HttpRequest, queryset: QuerySet[RelayToken]) -> HttpResponse | None:
        if request.POST.get("confirmed") != "yes":
            return confirm_action(
                self,
                request,
                list(queryset.select_related("relay")),
                action="revoke_tokens",
                title="Revoke these tokens?",
                warning="Clients using them are disconnected (4403) and cannot reconnect with them.",
            )
        revoked = sum(services.revoke_token_by_id(token_id=t.pk, reason="operator").revoked for t in queryset)
        self.message_user(request, f"Revoked {revoked} token(s).", messages.SUCCESS)
        return None


@admin.register(HostPolicy)
class HostPolicyAdmin(admin.ModelAdmin):
    list_display = ("__str__", "mode", "updated_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return not HostPolicy.objects.exists()

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(HostRule)
class HostRuleAdmin(admin.ModelAdmin):
    list_display = ("identity", "action", "note", "created_at")
    list_filter = ("action",)
    search_fields = ("identity", "note")


@admin.register(RelayPath)
class RelayPathAdmin(admin.ModelAdmin):
    """Which relay each client path belongs to. Claims come from registrations (first claim wins); the only
    way to move one is the reassign action, which asks for the new relay and a reason and is audited."""

    list_display = ("__str__", "relay", "source", "claimed_at")
    list_select_related = ("relay",)
    list_filter = ("source",)
    search_fields = ("path", "relay__relay_key", "relay__public_identifier")
    readonly_fields = ("path", "relay", "source", "claimed_at")
    actions = ["reassign"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.action(description="Reassign the selected path to another relay")
    def reassign(self, request: HttpRequest, queryset: QuerySet[RelayPath]) -> HttpResponse | None:
        rows = list(queryset.select_related("relay")[:1])
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one path to reassign.", messages.WARNING)
            return None
        row = rows[0]
        relay_key = (request.POST.get("relay_key") or "").strip()
        reason = (request.POST.get("reason") or "").strip()
        error = ""
        if request.POST.get("confirmed") == "yes":
            try:
                paths.reassign_path(
                    path=row.path, relay_key=relay_key, operator=request.user.get_username(), reason=reason
                )
            except ApiError as exc:
                error = exc.message
            else:
                self.message_user(request, f"/{row.path} now belongs to {relay_key}.", messages.SUCCESS)
                return None
        return TemplateResponse(
            request,
            "admin/relays/reassign_path.html",
            {
                **self.admin_site.each_context(request),
                "title": f"Reassign /{row.path}?",
                "row": row,
                "relay_key": relay_key,
                "reason": reason,
                "error": error,
                "opts": self.model._meta,
            },
        )


@admin.register(PathReassignment)
class PathReassignmentAdmin(admin.ModelAdmin):
    list_display = ("path", "from_relay_key", "to_relay_key", "operator", "reason", "at")
    list_filter = ("at",)
    search_fields = ("path", "from_relay_key", "to_relay_key", "operator")
    date_hierarchy = "at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
