"""Client-certificate authentication for the escrow API (``HYPERTUNA_ROLE=escrow``).

The TLS listener (``escrow.server``) requires a certificate from the private CA and puts the verified
peer certificate into the ASGI scope as the standard TLS extension (``scope["extensions"]["tls"]
["client_cert_chain"]``). Only the transport writes that key; a client cannot inject it through headers.
Authorization is by role (subject OU, see ``escrow.pki``), then by the worker's Ed25519 binding inside
the services.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from rest_framework.authentication import BaseAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from escrow.pki import ClientIdentity, identity_from_pem
from hypertuna.exceptions import ApiError

logger = logging.getLogger(__name__)


def peer_certificate(request: Request) -> str | None:
    scope = getattr(request._request, "scope", None)
    if not isinstance(scope, dict):
        return None
    tls = (scope.get("extensions") or {}).get("tls") or {}
    chain = tls.get("client_cert_chain") or []
    return chain[0] if chain else None


class ClientCertificateAuthentication(BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[Any, ClientIdentity]:
        pem = peer_certificate(request)
        if pem is None:
            raise ApiError(
                "client-certificate-required", "A client certificate from the escrow CA is required.", status=401
            )
        identity = identity_from_pem(pem)
        if identity is None:
            raise ApiError("client-role-missing", "The client certificate names no escrow role.", status=403)
        if identity.fingerprint in settings.HYPERTUNA_ESCROW_REVOKED_CERTS:
            logger.warning(
                "escrow: revoked client certificate presented",
                extra={"actor": identity.actor, "fingerprint": identity.fingerprint},
            )
            raise ApiError("client-certificate-revoked", "This client certificate has been revoked.", status=403)
        return (None, identity)

    def authenticate_header(self, request: Request) -> str:
        return "mutual-tls"


def role_permission(*roles: str) -> type[BasePermission]:
    class HasRole(BasePermission):
        message = f"This operation needs a client certificate with role {' or '.join(roles)}."

        def has_permission(self, request: Request, view: Any) -> bool:
            return isinstance(request.auth, ClientIdentity) and request.auth.role in roles

    HasRole.__name__ = "HasRole_" + "_".join(roles)
    return HasRole
