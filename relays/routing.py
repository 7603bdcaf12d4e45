from __future__ import annotations

from django.urls import re_path

from relays.consumers import RelayConsumer

# Any path: /<npub…>/<name>, /<64-hex relay key>, or a configured alias. The middleware resolves it and
# rejects unknown relays with 4404.
websocket_urlpatterns = [re_path(r"^.*$", RelayConsumer.as_asgi())]
