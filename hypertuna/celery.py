"""The Celery application: ``celery -A hypertuna.celery worker -B``.

Configuration comes from Django settings (``CELERY_*``); tasks are discovered in each app's ``tasks.py``.
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hypertuna.settings")

app = Celery("hypertuna")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
