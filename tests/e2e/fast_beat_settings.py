"""The project's settings with the Celery beat intervals shortened to one second, so an end-to-end test sees
the real worker and beat run the periodic sweeps within seconds. Nothing else differs."""

from hypertuna.settings import *  # noqa: F403
from hypertuna.settings import CELERY_BEAT_SCHEDULE as _SCHEDULE

CELERY_BEAT_SCHEDULE = {name: {**entry, "schedule": 1.0} for name, entry in _SCHEDULE.items()}
