from __future__ import annotations

from django.urls import path, re_path

from relays import proxy
from relays.api import views

urlpatterns = [
    path("api/relays", views.RelayRegistrationView.as_view(), name="relay-register"),
    path("api/relays/<str:relay_key>", views.RelayDetailView.as_view(), name="relay-detail"),
    path("api/relays/<str:relay_key>/resync-complete", views.ResyncCompleteView.as_view(), name="relay-resync"),
    path("api/relay-tokens/issue", views.TokenIssueView.as_view(), name="token-issue"),
    path("api/relay-tokens/refresh", views.TokenRefreshView.as_view(), name="token-refresh"),
    path("api/relay-tokens/revoke", views.TokenRevokeView.as_view(), name="token-revoke"),
    # Forwarded to workers (identifier: npub…/name, npub…:name or a hex relay key).
    re_path(r"^drive/(?P<identifier>.+)/(?P<file>[^/]+)$", proxy.drive_file, name="drive-file"),
    re_path(r"^pfp/(?P<owner>[^/]+)/(?P<file>[^/]+)$", proxy.pfp_file, name="pfp-owner-file"),
    re_path(r"^pfp/(?P<file>[^/]+)$", proxy.pfp_file, name="pfp-file"),
    re_path(r"^post/join/(?P<identifier>.+)$", proxy.post_join, name="post-join"),
    re_path(r"^callback/finalize-auth/(?P<identifier>.+)$", proxy.finalize_auth, name="finalize-auth"),
]
