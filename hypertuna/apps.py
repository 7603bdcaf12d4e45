from __future__ import annotations

import importlib
import importlib.util

from django.apps import AppConfig, apps

_PROJECT_APPS = {"hypertuna", "relays", "replicas", "escrow"}


class HypertunaConfig(AppConfig):
    name = "hypertuna"
    verbose_name = "Hypertuna Gateway"

    def ready(self) -> None:
        # Importing the Celery app makes it the current app in every process (web included), so
        # ``task.delay`` uses the configured broker rather than Celery's default AMQP URL.
        from hypertuna import celery as _celery  # noqa: F401
        from hypertuna import checks as _checks  # noqa: F401
        from hypertuna import health_metrics
        from hypertuna import schema as _schema  # noqa: F401

        # Scrape-time gauges (dependency reachability, replica states, lease-written events awaiting a worker).
        health_metrics.register_collectors()

        # Register every app's tasks in every process, not only in Celery workers (whose start-up is what
        # runs the lazy autodiscovery): the web process and the bridge event consumer enqueue tasks by name
        # (``current_app.tasks[name]``), which raises NotRegistered for a module nobody imported.
        for config in apps.get_app_configs():
            module = f"{config.name}.tasks"
            if config.name.split(".")[0] in _PROJECT_APPS and importlib.util.find_spec(module):
                importlib.import_module(module)
