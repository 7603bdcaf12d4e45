"""The confirmation page every dangerous admin action goes through before it calls a service."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.template.response import TemplateResponse


def confirm_action(
    model_admin: admin.ModelAdmin,
    request: HttpRequest,
    objects: Iterable[Any],
    *,
    action: str,
    title: str,
    warning: str,
    ask_reason: bool = False,
    confirm_label: str | None = None,
    empty_message: str | None = None,
) -> TemplateResponse:
    """Render the page; the action runs when the form posts back with ``confirmed=yes``."""
    return TemplateResponse(
        request,
        "admin/confirm_action.html",
        {
            **model_admin.admin_site.each_context(request),
            "title": title,
            "objects": list(objects),
            "action": action,
            "warning": warning,
            "ask_reason": ask_reason,
            "confirm_label": confirm_label,
            "empty_message": empty_message,
            "opts": model_admin.model._meta,
        },
    )
