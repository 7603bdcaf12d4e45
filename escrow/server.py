"""The escrow role's HTTPS listener: uvicorn with mandatory client certificates (mutual TLS 1.3).

Why uvicorn: Daphne's endpoint strings (Twisted ``ssl:`` endpoints) cannot require and verify a client
certificate, and the escrow must refuse a connection without one *before* any HTTP is parsed. uvicorn takes
an ``ssl.SSLContext`` configuration (``ssl_cert_reqs=CERT_REQUIRED``, ``ssl_ca_certs``) and after loading we
raise the floor to TLS 1.3 on the context it built.

uvicorn does not pass the peer certificate to the application, so ``MTLSH11Protocol`` adds it to each
request's scope as the ASGI TLS extension (``scope["extensions"]["tls"]``): only the transport writes that
key, nothing a client sends can set it. ``escrow.api.auth`` reads the role from it.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

ASGIApp = Any


class MTLSH11Protocol(H11Protocol):
    """h11 protocol that exposes the verified client certificate of this connection to the app."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        tls: dict[str, Any] = {
            "server_cert": None,
            "client_cert_chain": [],
            "client_cert_name": None,
            "client_cert_error": None,
            "tls_version": None,
            "cipher_suite": None,
        }
        if ssl_object is not None:
            der = ssl_object.getpeercert(binary_form=True)
            if der:
                tls["client_cert_chain"] = [ssl.DER_cert_to_PEM_cert(der)]
            if ssl_object.version() == "TLSv1.3":
                tls["tls_version"] = 0x0304
        inner = self.app

        async def app_with_tls(scope: dict[str, Any], receive: Any, send: Any) -> None:
            scope = {**scope, "extensions": {**(scope.get("extensions") or {}), "tls": tls}}
            await inner(scope, receive, send)

        self.app = app_with_tls


def server_context_check(context: ssl.SSLContext) -> None:
    """Invariants of the listener's TLS context (asserted at start-up and in tests)."""
    if context.verify_mode != ssl.CERT_REQUIRED:
        raise RuntimeError("The escrow listener must require client certificates.")
    if context.minimum_version < ssl.TLSVersion.TLSv1_3:
        raise RuntimeError("The escrow listener must refuse anything below TLS 1.3.")


def build_server(
    app: ASGIApp, *, host: str, port: int, certfile: str, keyfile: str, cafile: str, log_level: str = "warning"
) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http=MTLSH11Protocol,
        ws="none",
        lifespan="off",
        ssl_certfile=certfile,
        ssl_keyfile=keyfile,
        ssl_ca_certs=cafile,
        ssl_cert_reqs=ssl.CERT_REQUIRED,
        proxy_headers=False,
        server_header=False,
        date_header=False,
        access_log=False,
        log_config=None,
        log_level=log_level,
    )
    config.load()
    assert config.ssl is not None
    config.ssl.minimum_version = ssl.TLSVersion.TLSv1_3
    server_context_check(config.ssl)
    return uvicorn.Server(config)
