"""ASGI entry point: ``daphne hypertuna.asgi:application``.

HTTP goes to Django (static files served by Django's ASGI handler so the admin works without a separate
web server); WebSocket routing is added by the relays app.
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hypertuna.settings")

django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter  # noqa: E402  (needs configured settings)
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

application = ProtocolTypeRouter({"http": ASGIStaticFilesHandler(django_asgi_app)})
