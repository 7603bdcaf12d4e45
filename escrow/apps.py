from __future__ import annotations

from django.apps import AppConfig


class EscrowConfig(AppConfig):
    name = "escrow"
    verbose_name = "Escrow"

    def ready(self) -> None:
        from escrow import checks, metrics  # noqa: F401  (registers the system checks)

        metrics.register_collectors()
