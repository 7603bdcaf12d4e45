"""Hypertuna Gateway project package.

Kept free of imports so that the Django-free libraries below it (``hypertuna.nostr``,
``hypertuna.compat``, ``hypertuna.bridge``) can be imported without configuring Django. The Celery app
is loaded by ``HypertunaConfig.ready`` instead of here.
"""
