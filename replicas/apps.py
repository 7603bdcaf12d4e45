from __future__ import annotations

from django.apps import AppConfig


class ReplicasConfig(AppConfig):
    name = "replicas"
    verbose_name = "Replicas"

    def ready(self) -> None:
        from replicas import drives, metrics

        metrics.register_collectors()
        drives.register_collector()
