"""URL composition: wires the apps together."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from hypertuna import views
from hypertuna.compat.relaykeys import RESERVED_SEGMENTS
from relays import nip11

_OWN_ROUTES = "|".join(sorted(RESERVED_SEGMENTS))

admin.site.site_header = "Hypertuna Gateway"
admin.site.site_title = "Hypertuna Gateway"
admin.site.index_title = "Operator console"

urlpatterns = [
    path("health", views.health, name="health"),
    path("ready", views.ready, name="ready"),
    path("metrics", views.metrics, name="metrics"),
    path("admin/", admin.site.urls),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema"), name="api-redoc"),
    path("", include("replicas.urls")),
    path("", include("escrow.urls")),
    path("", include("relays.urls")),
    path("api/relays/<str:relay_key>/open-join/pool", views.open_join_pool, name="relay-open-join-pool"),
    # Last: every other path under /api/ answers JSON 404, whatever the method.
    re_path(r"^api/(?P<path>.*)$", views.api_not_found, name="api-not-found"),
    # Last of all: a relay's URL answers its NIP-11 document to Accept: application/nostr+json (else 404).
    # Not under the gateway's own first segments, so that "/admin" still redirects to "/admin/".
    re_path(rf"^(?!(?:{_OWN_ROUTES})(?:/|$))(?P<path>.+)$", nip11.relay_information, name="relay-information"),
]
