"""``manage.py escrow_relay``: operator overrides on the escrow host (each one audited).

manage.py escrow_relay status <relayKey>
manage.py escrow_relay revoke-lease <relayKey> --reason "..."
manage.py escrow_relay revoke-deposit <relayKey> --reason "..."     (lease too)
manage.py escrow_relay rebind <relayKey> <workerKeyHex> --reason "..."   (re-pin the worker key)
manage.py escrow_relay expire-now                                   (run the expiry sweep once)
"""

from __future__ import annotations

import getpass
import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from escrow import leases, selectors, services
from hypertuna.exceptions import ApiError


class Command(BaseCommand):
    help = "Escrow operator overrides: status, revoke a lease or deposit, re-pin a worker key, sweep expiry."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("action", choices=["status", "revoke-lease", "revoke-deposit", "rebind", "expire-now"])
        parser.add_argument("relay_key", nargs="?")
        parser.add_argument("worker_key", nargs="?")
        parser.add_argument("--reason", default="")
        parser.add_argument("--operator", default=None, help="Name recorded as the actor (default: login name)")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        actor = f"operator:{options['operator'] or getpass.getuser()}"
        if action == "expire-now":
            self.stdout.write(f"Swept {leases.expire_leases()} relay(s).")
            return
        relay_key = options["relay_key"]
        if not relay_key:
            raise CommandError(f"{action} needs a relay key")
        if action in ("revoke-lease", "revoke-deposit", "rebind") and not options["reason"]:
            raise CommandError("--reason is required for overrides (it goes into the audit log)")
        try:
            if action == "status":
                result: dict[str, Any] = selectors.relay_status(relay_key)
            elif action == "revoke-lease":
                result = leases.revoke(relay_key=relay_key, actor=actor, reason=options["reason"])
            elif action == "revoke-deposit":
                result = leases.revoke(relay_key=relay_key, actor=actor, reason=options["reason"], revoke_deposit=True)
            else:
                if not options["worker_key"]:
                    raise CommandError("rebind needs the new worker key (64 hex)")
                services.rebind_worker(
                    relay_key=relay_key, worker_key=options["worker_key"], actor=actor, reason=options["reason"]
                )
                result = selectors.relay_status(relay_key)
        except ApiError as exc:
            raise CommandError(f"{exc.code}: {exc.message}") from None
        self.stdout.write(json.dumps(result, indent=2))
