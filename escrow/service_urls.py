"""URLconf of the escrow role (``HYPERTUNA_ROLE=escrow``): the escrow API, health and metrics only."""

from __future__ import annotations

from django.urls import include, path

from escrow.api import views
from hypertuna import views as base_views

urlpatterns = [
    path("health", base_views.health, name="health"),
    path("ready", base_views.ready, name="ready"),
    path("metrics", base_views.metrics, name="metrics"),
    path("policy", views.PolicyView.as_view(), name="escrow-policy"),
    path("escrow", views.DepositView.as_view(), name="escrow-deposit"),
    path("escrow/heartbeat", views.HeartbeatView.as_view(), name="escrow-heartbeat"),
    path("escrow/unlock", views.UnlockView.as_view(), name="escrow-unlock"),
    path("escrow/renew", views.RenewView.as_view(), name="escrow-renew"),
    path("escrow/revoke", views.RevokeView.as_view(), name="escrow-revoke"),
    path("escrow/leases", views.LeasesView.as_view(), name="escrow-leases"),
    path("escrow/relays/<str:relay_key>", views.RelayStatusView.as_view(), name="escrow-relay-status"),
    # Read-only lists for the gateway's admin (gateway and operator certificates; no key material).
    path("", include("escrow.api.admin_read")),
]
