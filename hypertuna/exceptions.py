"""One error type and one handler for every API: bodies are ``{"error": code, "message": text}``.

Workers written for the existing gateway read the ``error`` field, so codes keep the kebab-case names
they already know (``invalid-signature``, ``token-expired``, ...). Extra context (for example the list of
failed policy reasons) goes in additional keys, never in place of ``error``.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.http import Http404
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """An expected failure with a stable machine-readable code and an HTTP status."""

    status_code = 400

    def __init__(self, code: str, message: str, *, status: int | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        if status is not None:
            self.status_code = status
        self.extra = extra

    def as_dict(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, **self.extra}


_DRF_CODES = {
    drf_exceptions.ParseError: "invalid-json",
    drf_exceptions.AuthenticationFailed: "authentication-failed",
    drf_exceptions.NotAuthenticated: "authentication-required",
    drf_exceptions.PermissionDenied: "forbidden",
    drf_exceptions.NotFound: "not-found",
    drf_exceptions.MethodNotAllowed: "method-not-allowed",
    drf_exceptions.UnsupportedMediaType: "unsupported-media-type",
    drf_exceptions.Throttled: "rate-limited",
    drf_exceptions.ValidationError: "invalid-request",
}


def body_too_large() -> dict[str, Any]:
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return {"error": "body-too-large", "message": f"Request body exceeds {limit} bytes.", "limit": limit}


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, ApiError):
        return Response(exc.as_dict(), status=exc.status_code)
    if isinstance(exc, RequestDataTooBig):
        # Raised while DRF reads the body; Django alone would answer an HTML 400.
        return Response(body_too_large(), status=413)
    if isinstance(exc, Http404):
        exc = drf_exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = drf_exceptions.PermissionDenied()
    response = exception_handler(exc, context)
    if response is None:
        return None
    code = next((c for cls, c in _DRF_CODES.items() if isinstance(exc, cls)), "error")
    if isinstance(exc, drf_exceptions.ValidationError):
        body: dict[str, Any] = {"error": code, "message": "Request body is invalid.", "fields": response.data}
    else:
        detail = response.data.get("detail") if isinstance(response.data, dict) else response.data
        body = {"error": code, "message": str(detail)}
    response.data = body
    return response
