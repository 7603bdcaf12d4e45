"""Escrow service API (served only by ``HYPERTUNA_ROLE=escrow`` behind mutual TLS).

Views parse, call one service or selector, and render; they never touch key material themselves.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from escrow import leases, selectors, services
from escrow.api import serializers as s
from escrow.api.auth import ClientCertificateAuthentication, role_permission
from escrow.pki import ClientIdentity
from hypertuna import ratelimit
from hypertuna.compat import normalize_relay_key
from hypertuna.exceptions import ApiError

ERRORS = {code: s.EscrowErrorResponse for code in (400, 401, 403, 404, 409, 422, 429, 503)}


class _EscrowView(APIView):
    authentication_classes = [ClientCertificateAuthentication]

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        # Per client certificate, after authentication: one misbehaving (or stolen) certificate cannot flood
        # the audit log with refusals or starve other clients. Fails closed when the counter store is down.
        identity = request.auth
        if isinstance(identity, ClientIdentity):
            try:
                decision = ratelimit.hit(
                    "escrow-client", identity.fingerprint, limit=settings.HYPERTUNA_ESCROW_RATELIMIT_PER_MINUTE
                )
            except Exception:
                raise ApiError("rate-limit-unavailable", "Cannot check the rate limit now.", status=503) from None
            if not decision.allowed:
                raise ApiError(
                    "rate-limited",
                    f"Too many requests; retry in {decision.retry_after} s.",
                    status=429,
                    retryAfter=decision.retry_after,
                )

    def identity(self, request: Request) -> ClientIdentity:
        assert isinstance(request.auth, ClientIdentity)
        return request.auth


class PolicyView(_EscrowView):
    permission_classes = [role_permission("gateway", "worker", "operator")]

    @extend_schema(responses={200: s.EscrowPolicyResponse, **ERRORS}, summary="Signed global policy and escrow keys")
    def get(self, request: Request) -> Response:
        return Response(selectors.policy_document())


class DepositView(_EscrowView):
    permission_classes = [role_permission("worker")]

    @extend_schema(
        request=s.EscrowDepositRequest,
        responses={201: s.EscrowDepositResponse, 200: s.EscrowDepositResponse, **ERRORS},
        summary="Deposit a sealed gateway-writer package (worker)",
    )
    def post(self, request: Request) -> Response:
        status, body = services.deposit(body=request.data, actor=self.identity(request).actor)
        return Response(body, status=200 if body.get("replayed") else status)


class HeartbeatView(_EscrowView):
    permission_classes = [role_permission("worker")]

    @extend_schema(
        request=s.EscrowStatementRequest,
        responses={200: s.EscrowHeartbeatResponse, **ERRORS},
        summary="Signed worker heartbeat",
    )
    def post(self, request: Request) -> Response:
        return Response(services.heartbeat(body=request.data, actor=self.identity(request).actor))


class RevokeView(_EscrowView):
    """Workers revoke their own deposit (signed body); the gateway revokes leases; operators either."""

    permission_classes = [role_permission("worker", "gateway", "operator")]

    @extend_schema(
        request=s.EscrowStatementRequest,
        responses={200: s.EscrowRevokeResponse, **ERRORS},
        summary="Revoke a deposit (worker, signed) or a lease (gateway, operator)",
    )
    def post(self, request: Request) -> Response:
        identity = self.identity(request)
        body: Any = request.data
        if identity.role == "worker":
            return Response(services.worker_revoke(body=body, actor=identity.actor))
        if not isinstance(body, dict):
            raise ApiError("invalid-request", "Body must be a JSON object.")
        reason = str(body.get("reason") or "revoke")[:200]
        if body.get("leaseId"):
            return Response(
                leases.revoke_lease_by_id(lease_id=str(body["leaseId"]), actor=identity.actor, reason=reason)
            )
        revoke_deposit = bool(body.get("deposit"))
        if revoke_deposit and identity.role != "operator":
            raise ApiError("forbidden", "Only operators may revoke a deposit; workers sign their own.", status=403)
        return Response(
            leases.revoke(
                relay_key=body.get("relayKey"), actor=identity.actor, reason=reason, revoke_deposit=revoke_deposit
            )
        )


class UnlockView(_EscrowView):
    permission_classes = [role_permission("gateway")]

    @extend_schema(
        request=s.EscrowUnlockRequest,
        responses={200: s.EscrowUnlockResponse, 412: s.EscrowRefusalResponse, **ERRORS},
        summary="Unlock under the global policy (gateway)",
    )
    def post(self, request: Request) -> Response:
        unlock_request = leases.parse_unlock(request.data)
        return Response(leases.unlock(request=unlock_request, requester=self.identity(request).actor))


class RenewView(_EscrowView):
    permission_classes = [role_permission("gateway")]

    @extend_schema(
        request=s.EscrowRenewRequest,
        responses={200: s.EscrowRenewResponse, **ERRORS},
        summary="Renew an active lease (gateway)",
    )
    def post(self, request: Request) -> Response:
        body = request.data if isinstance(request.data, dict) else {}
        ttl = body.get("ttl")
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 1):
            raise ApiError("invalid-request", "ttl must be a positive integer (seconds).")
        return Response(
            leases.renew(lease_id=str(body.get("leaseId", "")), requester=self.identity(request).actor, ttl=ttl)
        )


class LeasesView(_EscrowView):
    permission_classes = [role_permission("gateway", "operator")]

    @extend_schema(responses={200: s.EscrowLeaseQueryResponse, **ERRORS}, summary="Active leases at the escrow")
    def get(self, request: Request) -> Response:
        return Response({"leases": [selectors.lease_summary(lease) for lease in selectors.active_leases()]})


class RelayStatusView(_EscrowView):
    permission_classes = [role_permission("gateway", "operator")]

    @extend_schema(responses={200: dict, **ERRORS}, summary="Escrow state of one relay (no key material)")
    def get(self, request: Request, relay_key: str) -> Response:
        key = normalize_relay_key(relay_key)
        if key is None:
            raise ApiError("invalid-relay-key", "relayKey must be a 64-hex key or an npub…:name identifier.")
        return Response(selectors.relay_status(key))
