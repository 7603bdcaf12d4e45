from __future__ import annotations

from django.apps import AppConfig


class RelaysConfig(AppConfig):
    name = "relays"
    verbose_name = "Relays"

    def ready(self) -> None:
        from hypertuna.views import READINESS_PROBES
        from relays import metrics
        from relays.bridge import bridge_ready

        metrics.register_collectors()
        READINESS_PROBES["bridge"] = bridge_ready
