"""Worker-side client: deposits, heartbeats and revokes, signed with the worker's Ed25519 key.

Usable as a library (the tests and a Python worker) or from the command line::

    python -m escrow.worker_client --url https://escrow:8443 --ca ca.pem --cert worker.pem --key worker-key.pem \\
        --signing-key worker-signing.hex deposit --relay <relayKey> --writer-secret writer.hex --owner <peerKey>
    python -m escrow.worker_client ... heartbeat --relay <relayKey>
    python -m escrow.worker_client ... revoke --relay <relayKey> --reason worker-rotation
    python -m escrow.worker_client ... policy
    python -m escrow.worker_client new-key  # prints a fresh 32-byte seed (hex) for a signing or writer key

Key files hold a 32-byte Ed25519 seed or a 64-byte secret, as hex. Deposits carry an idempotency key and
are retried with the *same* body on transport failures and 5xx answers, so a retry after a lost response
never creates a second deposit. The exact bytes signed are specified in ``escrow/WIRE.md``.

Django-free: it imports only ``escrow.crypto``, ``escrow.wire``, ``escrow.transport`` and the standard library.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from escrow import crypto, wire
from escrow.transport import EscrowHTTPError, EscrowUnavailable, MTLSClient


class PolicyError(RuntimeError):
    pass


class _Clock:
    """Millisecond timestamps that strictly increase (the escrow rejects a non-increasing issuedAt)."""

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            self._last = max(int(time.time() * 1000), self._last + 1)
            return self._last


def verify_policy(document: dict[str, Any], pinned_verify_key: bytes | None = None) -> dict[str, Any]:
    """Check the policy signature (against a pinned key when given) and return the policy."""
    policy = document.get("policy")
    if not isinstance(policy, dict):
        raise PolicyError("policy document is malformed")
    verify_key = bytes.fromhex(str(policy.get("verifyKey", "")))
    if pinned_verify_key is not None and not crypto.constant_time_equal(verify_key, pinned_verify_key):
        raise PolicyError("policy is signed by an unexpected escrow key")
    canonical = json.dumps(policy, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    try:
        crypto.verify_signature(
            verify_key,
            crypto.message(crypto.DOMAIN_POLICY, [canonical]),
            crypto.b64decode(document.get("signature"), field="signature", length=crypto.SIGNATURE_BYTES),
        )
    except crypto.CryptoError:
        raise PolicyError("policy signature does not verify") from None
    return policy


def build_deposit(
    *,
    signing: crypto.Keypair,
    policy: dict[str, Any],
    relay_key: str,
    writer_secret: bytes | bytearray,
    owner_identity: str,
    expires_at: int,
    issued_at_ms: int,
    idempotency_key: str | None = None,
    allow_gateway_writes: bool = True,
) -> dict[str, Any]:
    """The deposit body: the writer secret sealed to the escrow key, signed by the worker."""
    writer_public = crypto.writer_public_key_of(writer_secret)
    escrow_public = bytes.fromhex(policy["escrowPublicKey"])
    sealed = crypto.seal_writer_package(escrow_public, relay_key, writer_public, writer_secret)
    idempotency_key = idempotency_key or secrets.token_urlsafe(24)
    signed = wire.deposit_message(
        relay_key=relay_key,
        worker_key=signing.public,
        owner_identity=owner_identity,
        writer_public_key=writer_public,
        sealed_secret=sealed,
        escrow_key_id=policy["escrowKeyId"],
        policy_version=int(policy["version"]),
        allow_gateway_writes=allow_gateway_writes,
        expires_at=expires_at,
        issued_at_ms=issued_at_ms,
        idempotency_key=idempotency_key,
    )
    return {
        "version": wire.WIRE_VERSION,
        "relayKey": relay_key,
        "workerKey": signing.public.hex(),
        "ownerIdentity": owner_identity,
        "writerPublicKey": writer_public.hex(),
        "sealedSecret": crypto.b64encode(sealed),
        "escrowKeyId": policy["escrowKeyId"],
        "policyVersion": int(policy["version"]),
        "allowGatewayWrites": allow_gateway_writes,
        "expiresAt": expires_at,
        "issuedAt": issued_at_ms,
        "idempotencyKey": idempotency_key,
        "signature": crypto.b64encode(signing.sign(signed)),
    }


def build_statement(
    kind: str, *, signing: crypto.Keypair, relay_key: str, issued_at_ms: int, reason: str = ""
) -> dict[str, Any]:
    """A signed heartbeat (``kind="heartbeat"``) or revoke (``kind="revoke"``) body."""
    body: dict[str, Any] = {
        "version": wire.WIRE_VERSION,
        "relayKey": relay_key,
        "workerKey": signing.public.hex(),
        "issuedAt": issued_at_ms,
        "signature": crypto.b64encode(
            signing.sign(wire.statement_message(kind, relay_key, signing.public, issued_at_ms, reason))
        ),
    }
    if kind == "revoke":
        body["reason"] = reason
    return body


class WorkerClient:
    """Talks to the escrow over mutual TLS with a worker certificate."""

    def __init__(
        self,
        transport: MTLSClient,
        signing: crypto.Keypair,
        *,
        pinned_verify_key: bytes | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.transport = transport
        self.signing = signing
        self.pinned_verify_key = pinned_verify_key
        self._clock = _Clock()
        self._sleep = sleep
        self._policy: dict[str, Any] | None = None

    def policy(self, *, refresh: bool = False) -> dict[str, Any]:
        if self._policy is None or refresh:
            self._policy = verify_policy(self.transport.request("GET", "/policy"), self.pinned_verify_key)
        return self._policy

    def deposit(
        self,
        relay_key: str,
        writer_secret: bytes | bytearray,
        *,
        owner_identity: str = "",
        ttl: int = 86400,
        allow_gateway_writes: bool = True,
        attempts: int = 8,
        deadline: float = 60.0,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Deposit (or re-deposit) a writer secret. Retries the identical body until answered."""
        policy = self.policy()
        body = build_deposit(
            signing=self.signing,
            policy=policy,
            relay_key=relay_key,
            writer_secret=writer_secret,
            owner_identity=owner_identity,
            expires_at=int(time.time()) + ttl,
            issued_at_ms=self._clock.next(),
            idempotency_key=idempotency_key,
            allow_gateway_writes=allow_gateway_writes,
        )
        return self._send_with_retries("/escrow", body, attempts=attempts, deadline=deadline)

    def heartbeat(self, relay_key: str) -> dict[str, Any]:
        body = build_statement("heartbeat", signing=self.signing, relay_key=relay_key, issued_at_ms=self._clock.next())
        return self.transport.request("POST", "/escrow/heartbeat", body)

    def revoke(self, relay_key: str, reason: str = "worker-revoke") -> dict[str, Any]:
        body = build_statement(
            "revoke", signing=self.signing, relay_key=relay_key, issued_at_ms=self._clock.next(), reason=reason
        )
        return self.transport.request("POST", "/escrow/revoke", body)

    def _send_with_retries(self, path: str, body: dict[str, Any], *, attempts: int, deadline: float) -> dict[str, Any]:
        started = time.monotonic()
        delay = 0.2
        for attempt in range(1, attempts + 1):
            try:
                return self.transport.request("POST", path, body)
            except EscrowUnavailable:
                # The first attempt may have committed; the retry carries the same idempotency key, so the
                # escrow answers it from its record instead of depositing twice.
                if attempt == attempts or time.monotonic() - started + delay > deadline:
                    raise
            except EscrowHTTPError as exc:
                if exc.code != "deposit-conflict" or attempt == attempts:
                    raise
            self._sleep(delay)
            delay = min(delay * 2, 5.0)
        raise EscrowUnavailable("escrow did not answer")


def read_key_file(path: str) -> bytearray:
    raw = bytearray(bytes.fromhex(Path(path).read_text(encoding="ascii").strip()))
    if len(raw) not in (32, 64):
        raise SystemExit(f"{path}: expected a 32-byte seed or 64-byte secret as hex")
    return raw


def _keypair(raw: bytearray) -> crypto.Keypair:
    keypair = crypto.signing_keypair_from_seed(bytes(raw[:32]))
    crypto.wipe(raw)
    return keypair


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m escrow.worker_client", description=__doc__.splitlines()[0])
    parser.add_argument("--url")
    parser.add_argument("--ca")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--signing-key", help="file with the worker's Ed25519 seed (hex)")
    parser.add_argument("--pin-verify-key", help="expected escrow verify key (hex)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("policy")
    sub.add_parser("new-key")
    dep = sub.add_parser("deposit")
    dep.add_argument("--relay", required=True)
    dep.add_argument("--writer-secret", required=True, help="file with the writer's Ed25519 seed or secret (hex)")
    dep.add_argument("--owner", default="")
    dep.add_argument("--ttl", type=int, default=86400)
    dep.add_argument("--no-gateway-writes", action="store_true")
    hb = sub.add_parser("heartbeat")
    hb.add_argument("--relay", required=True)
    rv = sub.add_parser("revoke")
    rv.add_argument("--relay", required=True)
    rv.add_argument("--reason", default="worker-revoke")
    args = parser.parse_args(argv)

    if args.command == "new-key":
        print(crypto.random_bytes(32).hex())
        return 0
    if not all([args.url, args.ca, args.cert, args.key, args.signing_key]):
        parser.error("--url, --ca, --cert, --key and --signing-key are required")
    client = WorkerClient(
        MTLSClient(args.url, ca=args.ca, cert=args.cert, key=args.key),
        _keypair(read_key_file(args.signing_key)),
        pinned_verify_key=bytes.fromhex(args.pin_verify_key) if args.pin_verify_key else None,
    )
    try:
        if args.command == "policy":
            result: dict[str, Any] = client.policy()
        elif args.command == "deposit":
            writer = crypto.signing_keypair_from_seed(bytes(read_key_file(args.writer_secret)[:32]))
            try:
                result = client.deposit(
                    args.relay,
                    writer.secret,
                    owner_identity=args.owner,
                    ttl=args.ttl,
                    allow_gateway_writes=not args.no_gateway_writes,
                )
            finally:
                crypto.wipe(writer.secret)
        elif args.command == "heartbeat":
            result = client.heartbeat(args.relay)
        else:
            result = client.revoke(args.relay, args.reason)
    except EscrowHTTPError as exc:
        print(json.dumps(exc.body), file=sys.stderr)
        return 1
    except (EscrowUnavailable, PolicyError) as exc:
        print(str(exc), file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
