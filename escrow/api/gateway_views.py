"""Gateway-side operator APIs for escrow leases (signed operator requests or a staff session).

- ``GET|POST /api/escrow/leases/query``: leases held by this gateway process (no secrets) and lease health.
- ``POST /api/escrow/leases/<relayKey>/request``: ask the escrow for a lease now (``{"healthyPeers": n}``,
  default 0: the operator asserts no peer is healthy; the escrow still applies its own heartbeat evidence).
- ``POST /api/escrow/leases/<relayKey>/release``: drop this process's lease and revoke it at the escrow.
"""

from __future__ import annotations

from asgiref.sync import async_to_sync
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from escrow.api import serializers as s
from escrow.coordinator import get_coordinator
from hypertuna.compat.relaykeys import normalize_relay_key
from hypertuna.exceptions import ApiError
from hypertuna.operator_auth import OPERATOR_AUTHENTICATION, IsOperator, OperatorKey

ERRORS = {code: s.EscrowErrorResponse for code in (400, 401, 403, 409, 502, 503)}
_STATUS = {"granted": 200, "refused": 412, "conflict": 409, "unavailable": 503, "disabled": 503, "error": 502}


def _relay(value: str) -> str:
    relay_key = normalize_relay_key(value)
    if relay_key is None:
        raise ApiError("invalid-relay-key", "relayKey must be a 64-hex key or an npub…:name identifier.")
    return relay_key


def _operator(request: Request) -> str:
    if isinstance(request.auth, OperatorKey):
        return f"operator:{request.auth.kid}"
    return f"operator:{getattr(request.user, 'username', 'staff')}"


class LeaseQueryView(APIView):
    authentication_classes = OPERATOR_AUTHENTICATION
    permission_classes = [IsOperator]

    @extend_schema(responses={200: s.EscrowLeaseQueryResponse, **ERRORS}, summary="Leases held by this gateway process")
    def get(self, request: Request) -> Response:
        coordinator = get_coordinator()
        coordinator.vault.sweep()
        return Response(
            {
                "escrowConfigured": coordinator.enabled,
                "leases": coordinator.vault.leases(),
                "leaseHealth": coordinator.vault.health(),
            }
        )

    @extend_schema(
        request=None, responses={200: s.EscrowLeaseQueryResponse, **ERRORS}, summary="Same as GET (signed POST)"
    )
    def post(self, request: Request) -> Response:
        return self.get(request)


class LeaseRequestView(APIView):
    authentication_classes = OPERATOR_AUTHENTICATION
    permission_classes = [IsOperator]

    @extend_schema(
        request=s.EscrowLeaseRequestInput,
        responses={200: s.EscrowLeaseResult, 412: s.EscrowLeaseResult, **ERRORS},
        summary="Ask the escrow for a write lease now (operator)",
    )
    def post(self, request: Request, relay_key: str) -> Response:
        relay_key = _relay(relay_key)
        body = s.EscrowLeaseRequestInput(data=request.data if isinstance(request.data, dict) else {})
        body.is_valid(raise_exception=True)
        healthy = body.validated_data["healthyPeers"]
        result = async_to_sync(get_coordinator().request_lease)(
            relay_key, healthy_peers=healthy, requested_by=_operator(request)
        )
        return Response(result.as_dict(), status=_STATUS.get(result.status, 502))


class LeaseReleaseView(APIView):
    authentication_classes = OPERATOR_AUTHENTICATION
    permission_classes = [IsOperator]

    @extend_schema(
        request=None, responses={200: s.EscrowLeaseReleaseResponse, **ERRORS}, summary="Release a held lease"
    )
    def post(self, request: Request, relay_key: str) -> Response:
        relay_key = _relay(relay_key)
        released = async_to_sync(get_coordinator().release)(relay_key, reason=f"released-by-{_operator(request)}")
        return Response({"relayKey": relay_key, "released": released})
