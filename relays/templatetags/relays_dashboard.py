"""``{% gateway_dashboard as dashboard %}``: the operator dashboard's data for the admin index."""

from __future__ import annotations

from typing import Any

from django import template

from relays import dashboard

register = template.Library()


@register.simple_tag
def gateway_dashboard() -> dict[str, Any]:
    return dashboard.build()
