"""``HYPERTUNA_ROLE=escrow manage.py run_escrow``: serve the escrow API over mutual TLS.

Certificates default to the development PKI made by ``manage.py escrow_certs init`` in
``HYPERTUNA_ESCROW_PKI_DIR``; production sets ``HYPERTUNA_ESCROW_TLS_CERT``/``_KEY``/``_CA``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.asgi import get_asgi_application
from django.core.management.base import BaseCommand, CommandError, CommandParser

from escrow.keystore import KeystoreError, escrow_keys
from escrow.server import build_server


class Command(BaseCommand):
    help = "Serve the escrow API over mutual TLS (uvicorn). Requires HYPERTUNA_ROLE=escrow."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=settings.HYPERTUNA_ESCROW_LISTEN_HOST)
        parser.add_argument("--port", type=int, default=settings.HYPERTUNA_ESCROW_LISTEN_PORT)

    def handle(self, *args: Any, **options: Any) -> None:
        if settings.ROLE != "escrow":
            raise CommandError("run_escrow serves only the escrow role: set HYPERTUNA_ROLE=escrow.")
        pki = Path(settings.HYPERTUNA_ESCROW_PKI_DIR)
        certfile = settings.HYPERTUNA_ESCROW_TLS_CERT or str(pki / "server.pem")
        keyfile = settings.HYPERTUNA_ESCROW_TLS_KEY or str(pki / "server-key.pem")
        cafile = settings.HYPERTUNA_ESCROW_TLS_CA or str(pki / "ca.pem")
        for path in (certfile, keyfile, cafile):
            if not Path(path).is_file():
                raise CommandError(f"{path} does not exist (run `manage.py escrow_certs init` for development).")
        try:
            keys = escrow_keys()  # fail before listening if the key file does not open
        except KeystoreError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            f"Escrow listening on https://{options['host']}:{options['port']} (mTLS, TLS 1.3; key id {keys.key_id})"
        )
        build_server(
            get_asgi_application(),
            host=options["host"],
            port=options["port"],
            certfile=certfile,
            keyfile=keyfile,
            cafile=cafile,
            log_level=settings.HYPERTUNA_LOG_LEVEL.lower(),
        ).run()
