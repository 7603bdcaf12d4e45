from __future__ import annotations

from django.urls import path

from relays.api import views

urlpatterns = [
    path("api/relays", views.RelayRegistrationView.as_view(), name="relay-register"),
    path("api/relays/<str:relay_key>", views.RelayDetailView.as_view(), name="relay-detail"),
    path("api/relays/<str:relay_key>/resync-complete", views.ResyncCompleteView.as_view(), name="relay-resync"),
    path("api/relay-tokens/issue", views.TokenIssueView.as_view(), name="token-issue"),
    path("api/relay-tokens/refresh", views.TokenRefreshView.as_view(), name="token-refresh"),
    path("api/relay-tokens/revoke", views.TokenRevokeView.as_view(), name="token-revoke"),
]
