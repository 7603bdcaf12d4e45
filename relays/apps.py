from __future__ import annotations

from django.apps import AppConfig


class RelaysConfig(AppConfig):
    name = "relays"
    verbose_name = "Relays"

    def ready(self) -> None:
        from relays import metrics

        metrics.register_collectors()
