"""HTTPS with a client certificate, for the gateway coordinator and the worker client (Django-free).

TLS 1.3 only, the server verified against the private escrow CA (never the system trust store), host
name checked. Bodies are JSON. Errors from the escrow come back as ``EscrowHTTPError`` with the wire
``error`` code; transport failures are ``EscrowUnavailable``. Neither carries request bodies.
"""

from __future__ import annotations

import http.client
import json
import ssl
from typing import Any
from urllib.parse import urlsplit


class EscrowUnavailable(RuntimeError):
    """The escrow could not be reached or did not answer (safe to retry idempotent calls)."""


class EscrowHTTPError(RuntimeError):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.code = str(body.get("error", "error"))
        self.body = body
        super().__init__(f"escrow answered {status} {self.code}")


def client_context(*, ca: str, cert: str, key: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_verify_locations(cafile=ca)
    context.load_cert_chain(certfile=cert, keyfile=key)
    return context


class MTLSClient:
    def __init__(self, base_url: str, *, ca: str, cert: str, key: str, timeout: float = 10.0) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError("The escrow URL must be https://host[:port][/prefix]")
        self.host = parts.hostname
        self.port = parts.port or 443
        self.prefix = parts.path.rstrip("/")
        self.timeout = timeout
        self.context = client_context(ca=ca, cert=cert, key=key)

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        payload = json.dumps(body, separators=(",", ":")).encode() if body is not None else None
        headers = {"Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        connection = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=self.context)
        try:
            connection.request(method, self.prefix + path, body=payload, headers=headers)
            response = connection.getresponse()
            raw = response.read()
            status = response.status
        except (OSError, http.client.HTTPException) as exc:
            raise EscrowUnavailable(f"escrow request failed: {type(exc).__name__}") from None
        finally:
            connection.close()
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = {"error": "invalid-response"}
        if not isinstance(data, dict):
            data = {"error": "invalid-response"}
        if status >= 500:
            raise EscrowUnavailable(f"escrow answered {status}")
        if status >= 400:
            raise EscrowHTTPError(status, data)
        return data


def gateway_client(*, timeout: float | None = None) -> MTLSClient | None:
    """The gateway's mutual-TLS client of the escrow, from settings (``timeout`` caps
    ``HYPERTUNA_ESCROW_TIMEOUT``); None unless the URL, the CA, the client certificate and its key are all set:
    never plain TLS or the system trust store."""
    from django.conf import settings

    url, ca, cert, key = (
        settings.HYPERTUNA_ESCROW_URL,
        settings.HYPERTUNA_ESCROW_CA,
        settings.HYPERTUNA_ESCROW_CLIENT_CERT,
        settings.HYPERTUNA_ESCROW_CLIENT_KEY,
    )
    if not (url and ca and cert and key):
        return None
    limit = settings.HYPERTUNA_ESCROW_TIMEOUT
    return MTLSClient(url, ca=ca, cert=cert, key=key, timeout=limit if timeout is None else min(timeout, limit))
