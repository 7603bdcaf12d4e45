"""Operator authentication for DRF APIs: a staff session (the admin) or a signed request.

Signed requests use ``hypertuna.reqsign`` with keys from ``HYPERTUNA_OPERATOR_KEYS`` (``kid:secret`` pairs;
one kid may appear twice during rotation). The nonce is recorded with ``SET NX`` in the shared cache for
twice the freshness window; if the cache cannot be reached the request is refused (503), never accepted
unchecked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.cache import cache
from rest_framework.authentication import BaseAuthentication, SessionAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from hypertuna import reqsign
from hypertuna.exceptions import ApiError


@dataclass(frozen=True)
class OperatorKey:
    """The authenticated signer (``request.auth``)."""

    kid: str


def operator_keys() -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    pairs: list[str] = list(settings.HYPERTUNA_OPERATOR_KEYS)
    for pair in pairs:
        kid, _, secret = str(pair).partition(":")
        if kid and secret:
            keys.setdefault(kid, []).append(secret)
    return keys


class SignedRequestAuthentication(BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[Any, OperatorKey] | None:
        value = request.headers.get(reqsign.HEADER)
        if not value:
            return None
        try:
            header = reqsign.parse_header(value)
            reqsign.verify(
                header,
                method=request.method or "GET",
                path=request.path,
                query=request.META.get("QUERY_STRING", ""),
                body=request.body,
                secrets_for_kid=operator_keys().get(header.kid, []),
                window=settings.HYPERTUNA_SIGNATURE_WINDOW,
            )
        except reqsign.SignatureError as exc:
            raise ApiError(exc.code, str(exc), status=401) from None
        try:
            fresh = cache.add(
                f"reqsign-nonce:{header.kid}:{header.nonce}", 1, timeout=2 * settings.HYPERTUNA_SIGNATURE_WINDOW
            )
        except Exception:
            raise ApiError("replay-check-unavailable", "Cannot check the request nonce now.", status=503) from None
        if not fresh:
            raise ApiError("signature-replayed", "This request nonce was already used.", status=401)
        return (None, OperatorKey(kid=header.kid))

    def authenticate_header(self, request: Request) -> str:
        return reqsign.HEADER


class IsOperator(BasePermission):
    """A signed operator request, or a logged-in staff user."""

    message = "Operator authentication required (staff session or signed request)."

    def has_permission(self, request: Request, view: Any) -> bool:
        if isinstance(request.auth, OperatorKey):
            return True
        user = getattr(request, "user", None)
        return bool(user is not None and user.is_authenticated and user.is_staff)


OPERATOR_AUTHENTICATION = [SignedRequestAuthentication, SessionAuthentication]
