"""Blind-peer APIs: operator status and actions (operator-authenticated), worker mirror metadata
(HMAC-signed like registrations). Each view parses, calls one service or selector, renders."""

from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from hypertuna.api import WorkerAPIView
from hypertuna.operator_auth import OPERATOR_AUTHENTICATION, IsOperator, OperatorKey
from replicas import blindpeer, selectors, services
from replicas.api import serializers as s
from replicas.models import MirrorAction

ERRORS = {400: s.BlindPeerError, 401: s.BlindPeerError, 403: s.BlindPeerError}


class OperatorAPIView(APIView):
    authentication_classes = OPERATOR_AUTHENTICATION
    permission_classes = [IsOperator]


def _operator_name(request: Request) -> str:
    if isinstance(request.auth, OperatorKey):
        return f"key:{request.auth.kid}"
    user = getattr(request, "user", None)
    return f"user:{user.get_username()}" if user is not None and user.is_authenticated else ""


def _action(action: MirrorAction) -> dict[str, Any]:
    return {
        "id": action.pk,
        "action": action.action,
        "coreKey": action.core_key or None,
        "status": action.status,
        "requestedAt": action.requested_at,
    }


def public_blind_peer(summary: dict[str, Any]) -> dict[str, Any]:
    """The public subset, at the top level and in the ``summary`` object hyperpipe workers read
    (``summary.publicKey``, ``summary.encryptionKey``, ``summary.maxBytes`` / ``summary.config.maxBytes``)."""
    return {**summary, "summary": {**summary, "config": {"maxBytes": summary["maxBytes"]}}}


class BlindPeerSummaryView(WorkerAPIView):
    """Public for workers (how to reach the blind peer); operator detail for staff or signed requests."""

    authentication_classes = OPERATOR_AUTHENTICATION

    @extend_schema(
        responses={200: s.SummaryResponse, 401: s.BlindPeerError, 429: s.BlindPeerError},
        summary="Blind-peer keys for workers (anyone); mirrors and replicas summary (operators)",
    )
    def get(self, request: Request) -> Response:
        public = public_blind_peer(async_to_sync(blindpeer.public_summary)())
        if not IsOperator().has_permission(request, self):
            return Response(public)
        return Response({**public, **selectors.blind_peer_summary()})


class BlindPeerReplicasView(OperatorAPIView):
    @extend_schema(
        parameters=[s.ReplicasQuery],
        responses={200: s.ReplicasResponse, **ERRORS},
        summary="Per-relay replica readiness and real lag",
    )
    def get(self, request: Request) -> Response:
        query = s.ReplicasQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        return Response(
            {
                "replicas": selectors.replicas_list(
                    limit=query.validated_data["limit"], with_cores=query.validated_data["cores"]
                )
            }
        )


class BlindPeerGcView(OperatorAPIView):
    @extend_schema(
        request=s.GcRequest,
        responses={202: s.ActionResponse, **ERRORS},
        summary="Request a blind-peer GC run (recorded, then carried out by the bridge)",
    )
    def post(self, request: Request) -> Response:
        body = s.GcRequest(data=request.data)
        body.is_valid(raise_exception=True)
        action = services.request_gc(reason=body.validated_data["reason"], requested_by=_operator_name(request))
        return Response(_action(action), status=202)


class BlindPeerMirrorView(OperatorAPIView):
    @extend_schema(
        parameters=[s.DropQuery],
        responses={202: s.ActionResponse, 404: s.BlindPeerError, **ERRORS},
        summary="Drop one mirrored core (recorded, then deleted by the bridge)",
    )
    def delete(self, request: Request, core_key: str) -> Response:
        query = s.DropQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        action = services.request_drop(
            core_key=core_key, reason=query.validated_data["reason"], requested_by=_operator_name(request)
        )
        return Response(_action(action), status=202)


class MirrorMetadataView(WorkerAPIView):
    """Worker → gateway: which cores of which relay the worker asked the blind peer to mirror."""

    @extend_schema(
        request=s.MirrorMetadataRequest,
        responses={
            200: s.MetadataResponse,
            409: s.BlindPeerError,
            429: s.BlindPeerError,
            503: s.BlindPeerError,
            **ERRORS,
        },
        summary="Worker mirror metadata (HMAC-signed with the registration secret)",
    )
    def post(self, request: Request) -> Response:
        body = s.MirrorMetadataRequest(data=request.data)
        body.is_valid(raise_exception=True)
        result = services.record_worker_metadata(
            payload=request.data["payload"], signature=body.validated_data["signature"]
        )
        return Response({"status": "ok", "relayKey": result.relay_key, "cores": result.cores})
