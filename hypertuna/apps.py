from __future__ import annotations

from django.apps import AppConfig


class HypertunaConfig(AppConfig):
    name = "hypertuna"
    verbose_name = "Hypertuna Gateway"

    def ready(self) -> None:
        # Importing the Celery app makes it the current app in every process (web included), so
        # ``task.delay`` uses the configured broker rather than Celery's default AMQP URL.
        from hypertuna import celery as _celery  # noqa: F401
        from hypertuna import checks as _checks  # noqa: F401
        from hypertuna import schema as _schema  # noqa: F401
