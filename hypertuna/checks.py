"""System checks (``manage.py check``) for unsafe production settings. Ids are stable: hypertuna.W0xx."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Tags, Warning, register


@register(Tags.security, deploy=True)
@register(Tags.security)
def check_production_settings(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    warnings: list[Warning] = []
    production = not settings.DEBUG and (settings.REDIS_URL or not settings.DATABASE_IS_SQLITE)
    if settings.DEBUG and settings.REDIS_URL:
        warnings.append(
            Warning(
                "DEBUG is on while the gateway uses shared infrastructure (REDIS_URL is set).",
                hint="Set DEBUG=false in production: debug pages leak settings and stack traces.",
                id="hypertuna.W001",
            )
        )
    if production and settings.SECRET_KEY_IS_GENERATED:
        warnings.append(
            Warning(
                "SECRET_KEY is not set; a random key is generated at every start.",
                hint="Set SECRET_KEY so sessions survive restarts and all web nodes agree.",
                id="hypertuna.W002",
            )
        )
    if production and settings.CHANNEL_LAYERS["default"]["BACKEND"] == "channels.layers.InMemoryChannelLayer":
        warnings.append(
            Warning(
                "The channel layer is in memory: token revocation reaches only sockets on this node.",
                hint="Set REDIS_URL so every gateway node shares the channel layer.",
                id="hypertuna.W003",
            )
        )
    if settings.ROLE == "gateway" and not settings.HYPERTUNA_REGISTRATION_SECRET:
        warnings.append(
            Warning(
                "HYPERTUNA_REGISTRATION_SECRET is not set: worker registration and tokens are disabled.",
                hint="Set the shared secret the workers sign with.",
                id="hypertuna.W004",
            )
        )
    elif settings.HYPERTUNA_REGISTRATION_SECRET and len(settings.HYPERTUNA_REGISTRATION_SECRET) < 16:
        warnings.append(
            Warning(
                "HYPERTUNA_REGISTRATION_SECRET is shorter than 16 characters.",
                hint="Use a long random secret, e.g. the output of `openssl rand -hex 32`.",
                id="hypertuna.W005",
            )
        )
    if production and not settings.HYPERTUNA_METRICS_TOKEN:
        warnings.append(
            Warning(
                "/metrics is served without a bearer token.",
                hint="Set HYPERTUNA_METRICS_TOKEN, or keep /metrics off the public listener.",
                id="hypertuna.W006",
            )
        )
    return warnings
