"""Shared DRF building blocks for the apps' APIs."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.views import APIView

from hypertuna import ratelimit
from hypertuna.exceptions import ApiError


class WorkerAPIView(APIView):
    """A worker-facing endpoint: authenticated by the HMAC its service checks (no session, no CSRF) and
    rate-limited per client address on the shared cache."""

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        decision = ratelimit.hit(
            "api-ip", ratelimit.client_ip(request), limit=settings.HYPERTUNA_RATELIMIT_IP_PER_MINUTE
        )
        if not decision.allowed:
            raise ApiError(
                "rate-limited",
                f"Too many requests; retry in {decision.retry_after} s.",
                status=429,
                retryAfter=decision.retry_after,
            )
