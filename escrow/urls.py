"""Gateway-role escrow routes (operator APIs). The escrow service's own routes are in ``service_urls``."""

from __future__ import annotations

from django.urls import path

from escrow.api import gateway_views

urlpatterns = [
    path("api/escrow/leases/query", gateway_views.LeaseQueryView.as_view(), name="escrow-lease-query"),
    path(
        "api/escrow/leases/<str:relay_key>/request",
        gateway_views.LeaseRequestView.as_view(),
        name="escrow-lease-request",
    ),
    path(
        "api/escrow/leases/<str:relay_key>/release",
        gateway_views.LeaseReleaseView.as_view(),
        name="escrow-lease-release",
    ),
]
