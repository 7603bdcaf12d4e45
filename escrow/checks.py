"""System checks for the escrow (ids escrow.W0xx / escrow.E0xx are stable)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register


@register(Tags.security, deploy=True)
@register(Tags.security)
def check_escrow_settings(app_configs: Any = None, **kwargs: Any) -> list[Warning | Error]:
    from escrow.keystore import kek_is_development

    messages: list[Warning | Error] = []
    if settings.ROLE == "escrow" and not settings.DEBUG and kek_is_development():
        messages.append(
            Warning(
                "The escrow key file is encrypted under a development key-encryption key stored next to it.",
                hint="Set HYPERTUNA_ESCROW_KEK or HYPERTUNA_ESCROW_KEK_FILE from a secret store.",
                id="escrow.W001",
            )
        )
    if settings.ROLE == "gateway" and settings.HYPERTUNA_ESCROW_URL:
        missing = [
            name
            for name in ("HYPERTUNA_ESCROW_CA", "HYPERTUNA_ESCROW_CLIENT_CERT", "HYPERTUNA_ESCROW_CLIENT_KEY")
            if not getattr(settings, name)
        ]
        if missing:
            messages.append(
                Error(
                    f"HYPERTUNA_ESCROW_URL is set but {', '.join(missing)} is not.",
                    hint="The coordinator talks to the escrow over mutual TLS only.",
                    id="escrow.E001",
                )
            )
    return messages
