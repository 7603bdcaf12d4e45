"""Read-only operator endpoints of the escrow role, for the gateway's admin and dashboard
(``escrow.admin_remote``): deposits, leases, audit entries, audit verifications and a summary. Gateway and
operator certificates only; no key material in any answer (the rows are built by ``escrow.admin_remote``).

``urlpatterns`` holds these reads only; the escrow role's URLconf (``escrow.service_urls``) includes them.
"""

from __future__ import annotations

from django.urls import path
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from escrow import admin_remote
from escrow.api.auth import role_permission
from escrow.api.views import ERRORS, _EscrowView
from hypertuna.exceptions import ApiError


class AdminRowsView(_EscrowView):
    permission_classes = [role_permission("gateway", "operator")]

    @extend_schema(responses={200: dict, **ERRORS}, summary="Escrow records for the operator console (read-only)")
    def get(self, request: Request, kind: str) -> Response:
        if kind not in admin_remote.KINDS:
            raise ApiError("not-found", f"No such record kind; one of {', '.join(admin_remote.KINDS)}.", status=404)
        params = {name: str(request.query_params.get(name, "")) for name in admin_remote.KINDS[kind][2]}
        return Response({"rows": admin_remote.query(kind, params)})


class AdminSummaryView(_EscrowView):
    permission_classes = [role_permission("gateway", "operator")]

    @extend_schema(responses={200: dict, **ERRORS}, summary="Escrow summary for the operator dashboard")
    def get(self, request: Request) -> Response:
        return Response(admin_remote.summary())


urlpatterns = [
    path("escrow/admin/summary", AdminSummaryView.as_view(), name="escrow-admin-summary"),
    path("escrow/admin/<str:kind>", AdminRowsView.as_view(), name="escrow-admin-rows"),
]
