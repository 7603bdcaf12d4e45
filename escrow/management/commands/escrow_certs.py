"""``manage.py escrow_certs``: a development CA and certificates for the escrow's mutual TLS.

    manage.py escrow_certs init [--server-name escrow.internal ...]   CA, server, gateway and operator certs
    manage.py escrow_certs issue --role worker --name <worker-id>    another client certificate

Files go to ``HYPERTUNA_ESCROW_PKI_DIR`` (or ``--dir``); private keys are written with mode 0600. The CA
key is what lets anyone mint a gateway certificate: production keeps it offline (see the runbook).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from escrow import pki


class Command(BaseCommand):
    help = "Create a development CA and escrow certificates (server, gateway, operator, workers)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["init", "issue"])
        parser.add_argument("--dir", default=None)
        parser.add_argument(
            "--server-name",
            action="append",
            default=None,
            help="DNS name or IP of the escrow listener (repeatable; default localhost, 127.0.0.1)",
        )
        parser.add_argument("--role", choices=pki.ROLES)
        parser.add_argument("--name", help="Common name of the client (worker id, gateway node, operator)")
        parser.add_argument("--force", action="store_true", help="Overwrite an existing CA")

    def handle(self, *args: Any, **options: Any) -> None:
        directory = Path(options["dir"] or settings.HYPERTUNA_ESCROW_PKI_DIR)
        ca = pki.Issued(directory / "ca.pem", directory / "ca-key.pem")
        if options["action"] == "init":
            if ca.cert.exists() and not options["force"]:
                raise CommandError(f"{ca.cert} exists; use --force to replace the CA (invalidates every cert).")
            pki.create_ca(directory)
            names = tuple(options["server_name"] or ("localhost", "127.0.0.1"))
            made = [
                pki.issue(ca, directory, stem="server", common_name=names[0], role=None, server_names=names),
                pki.issue(ca, directory, stem="gateway", common_name="gateway", role="gateway"),
                pki.issue(ca, directory, stem="operator", common_name="operator", role="operator"),
                pki.issue(ca, directory, stem="worker", common_name="worker", role="worker"),
            ]
        else:
            if not options["role"] or not options["name"]:
                raise CommandError("issue needs --role and --name")
            if not ca.cert.exists():
                raise CommandError(f"No CA in {directory}; run `escrow_certs init` first.")
            stem = f"{options['role']}-{options['name']}"
            made = [pki.issue(ca, directory, stem=stem, common_name=options["name"], role=options["role"])]
        for issued in made:
            self.stdout.write(f"{issued.cert}  (key {issued.key})")
