"""Worker-facing APIs: registration and relay access tokens.

Authentication is the HMAC in the body or ``x-signature`` header (checked by the services), so these
views carry no session authentication and no CSRF. Each view parses, calls one service, renders.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response

from hypertuna import ratelimit
from hypertuna.api import WorkerAPIView
from hypertuna.compat import verify_hmac
from hypertuna.exceptions import ApiError
from relays import services
from relays.api import serializers as s

ERRORS = {
    400: s.ErrorResponse,
    401: s.ErrorResponse,
    403: s.ErrorResponse,
    409: s.ErrorResponse,
    429: s.ErrorResponse,
    503: s.ErrorResponse,
}


class RelayRegistrationView(WorkerAPIView):
    @extend_schema(
        request=s.RegistrationRequest,
        responses={200: s.RegistrationResponse, **ERRORS},
        summary="Register or refresh a relay (HMAC-signed by the worker)",
    )
    def post(self, request: Request) -> Response:
        body = s.RegistrationRequest(data=request.data)
        body.is_valid(raise_exception=True)
        relay = services.register_relay(
            registration=request.data["registration"],
            signature=body.validated_data["signature"],
            client_ip=ratelimit.client_ip(request),
        )
        return Response(
            {
                "status": "ok",
                "hyperbee": None,
                "relayKey": relay.relay_key,
                "expiresAt": int(relay.expires_at.timestamp() * 1000),
            }
        )


SIGNATURE_HEADER = OpenApiParameter(
    "x-signature",
    str,
    OpenApiParameter.HEADER,
    required=True,
    description="hex HMAC over the canonical JSON described in the operation",
)


class RelayDetailView(WorkerAPIView):
    @extend_schema(
        parameters=[SIGNATURE_HEADER],
        responses={200: s.StatusResponse, **ERRORS},
        summary='Unregister a relay (x-signature over {"relayKey": …})',
    )
    def delete(self, request: Request, relay_key: str) -> Response:
        services.unregister_relay(relay_key=relay_key, signature=request.headers.get("x-signature"))
        return Response({"status": "ok"})


class ResyncCompleteView(WorkerAPIView):
    @extend_schema(
        request=None,
        parameters=[SIGNATURE_HEADER],
        responses={200: s.StatusResponse, 404: s.ErrorResponse, **ERRORS},
        summary='Worker replicated the gateway\'s writes (x-signature over {"action":"resync-complete","relayKey":…})',
    )
    def post(self, request: Request, relay_key: str) -> Response:
        services.resync_complete(relay_key=relay_key, signature=request.headers.get("x-signature"))
        return Response({"status": "ok"})


def signed_payload(request: Request) -> dict[str, Any]:
    """Validate ``{"payload": {...}, "signature": hex}`` and return the authenticated payload."""
    body = s.SignedPayloadRequest(data=request.data)
    body.is_valid(raise_exception=True)
    secret = settings.HYPERTUNA_REGISTRATION_SECRET
    if not secret:
        raise ApiError("token-service-disabled", "The gateway has no registration secret configured.", status=503)
    payload = request.data["payload"]
    if not verify_hmac(secret, payload, body.validated_data["signature"]):
        raise ApiError("invalid-signature", "Payload signature does not verify.", status=401)
    return payload


class TokenIssueView(WorkerAPIView):
    @extend_schema(
        request=s.SignedPayloadRequest,
        responses={200: s.TokenResponse, **ERRORS},
        summary="Issue a client token (payload: relayKey, relayAuthToken, pubkey?, scope?, ttlSeconds?)",
    )
    def post(self, request: Request) -> Response:
        payload = signed_payload(request)
        issued = services.issue_token(
            relay_key=payload.get("relayKey"),
            relay_auth_token=payload.get("relayAuthToken"),
            pubkey=payload.get("pubkey"),
            scope=payload.get("scope"),
            ttl_seconds=payload.get("ttlSeconds"),
        )
        return Response(issued.as_dict())


class TokenRefreshView(WorkerAPIView):
    @extend_schema(
        request=s.SignedPayloadRequest,
        responses={200: s.TokenResponse, **ERRORS},
        summary="Exchange a valid token for a fresh one (payload: relayKey, token, ttlSeconds?)",
    )
    def post(self, request: Request) -> Response:
        payload = signed_payload(request)
        issued = services.refresh_token(
            relay_key=payload.get("relayKey"), token=payload.get("token"), ttl_seconds=payload.get("ttlSeconds")
        )
        return Response(issued.as_dict())


class TokenRevokeView(WorkerAPIView):
    @extend_schema(
        request=s.SignedPayloadRequest,
        responses={200: s.RevokeResponse, **ERRORS},
        summary="Revoke one token, all up to a sequence, or all (payload: relayKey, token?, sequence?, reason?)",
    )
    def post(self, request: Request) -> Response:
        payload = signed_payload(request)
        result = services.revoke_tokens(
            relay_key=payload.get("relayKey"),
            reason=payload.get("reason"),
            token=payload.get("token"),
            sequence=payload.get("sequence"),
        )
        return Response(
            {
                "status": "revoked",
                "disconnected": result.disconnected,
                "revoked": result.revoked,
                "sequence": result.sequence,
            }
        )
