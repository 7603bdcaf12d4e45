"""ASGI entry point: ``uvicorn hypertuna.asgi:application`` (``hypertuna.webserver.web_argv``).

HTTP goes to Django (static files served by Django's ASGI handler so the admin works without a separate
web server); WebSockets go to the relay consumer, authenticated by ``RelayAuthMiddleware``. There is no
Origin check on purpose: Nostr clients are web pages on any origin, and credentials travel in the URL
token, not in cookies, so a cross-site page gains nothing it could not do directly.
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hypertuna.settings")

django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402  (needs configured settings)
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from hypertuna.outage import WebSocketOutageGuard  # noqa: E402
from relays.middleware import RelayAuthMiddleware  # noqa: E402
from relays.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": ASGIStaticFilesHandler(django_asgi_app),
        # Redis unreachable: a NOTICE and close 1013, never an HTTP 500 or a bare 1011 (hypertuna/outage.py).
        "websocket": WebSocketOutageGuard(RelayAuthMiddleware(URLRouter(websocket_urlpatterns))),
    }
)
