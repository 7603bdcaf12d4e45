"""The escrow role over a real mutual-TLS listener (uvicorn on 127.0.0.1): transport and roles."""

from __future__ import annotations

import http.client
import socket
import ssl

import pytest

from escrow import crypto
from escrow.keystore import escrow_keys
from escrow.models import Deposit, Lease
from escrow.transport import EscrowHTTPError, EscrowUnavailable
from escrow.worker_client import PolicyError, WorkerClient
from tests.escrow.mtls import escrow_listener, make_pki

pytestmark = [pytest.mark.urls("escrow.service_urls"), pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def escrow_url(certs, escrow_settings):
    escrow_settings.HYPERTUNA_ESCROW_HEARTBEAT_SILENCE = 0  # unlock right after the deposit in these tests
    with escrow_listener(certs) as url:
        yield url


def unlock_body(relay_key: str, session: crypto.SessionKeypair, healthy: int = 0) -> dict:
    import time

    return {
        "relayKey": relay_key,
        "sessionPublicKey": crypto.b64encode(session.public),
        "evidence": {"healthyPeers": healthy, "mirrorFreshAt": int(time.time()) - 5},
    }


def test_worker_deposits_and_gateway_unlocks_over_mtls(certs, escrow_url):
    worker = WorkerClient(
        certs.client(escrow_url, certs.worker),
        crypto.generate_signing_keypair(),
        pinned_verify_key=escrow_keys().verify_key,
    )
    writer = crypto.generate_signing_keypair()
    relay_key = "ab" * 32
    deposit = worker.deposit(relay_key, writer.secret, owner_identity="peer-1")
    assert deposit["relayKey"] == relay_key and Deposit.objects.count() == 1

    gateway = certs.client(escrow_url, certs.gateway)
    session = crypto.generate_session_keypair()
    with pytest.raises(EscrowHTTPError) as excinfo:
        gateway.request("POST", "/escrow/unlock", unlock_body(relay_key, crypto.generate_session_keypair(), healthy=3))
    assert excinfo.value.status == 412 and excinfo.value.body["reasons"] == ["peers-reported-healthy"]

    grant = gateway.request("POST", "/escrow/unlock", unlock_body(relay_key, session))
    opened = crypto.open_lease(
        session,
        sealed=crypto.b64decode(grant["sealedSecret"], field="s"),
        signature=crypto.b64decode(grant["signature"], field="s"),
        escrow_verify_key=escrow_keys().verify_key,
        lease_id=grant["leaseId"],
        relay_key=relay_key,
        fence=grant["fence"],
        expires_at=grant["expiresAt"],
        writer_public=bytes.fromhex(grant["writerPublicKey"]),
    )
    assert bytes(opened.writer_secret) == bytes(writer.secret)
    assert Lease.objects.get().requester == "gateway:gw-1"
    renewed = gateway.request("POST", "/escrow/renew", {"leaseId": grant["leaseId"], "ttl": 120})
    assert renewed["leaseId"] == grant["leaseId"] and renewed["maxExpiresAt"] == grant["maxExpiresAt"]
    listed = gateway.request("GET", "/escrow/leases")["leases"]
    assert [lease["leaseId"] for lease in listed] == [grant["leaseId"]]
    assert "sealedSecret" not in str(listed)

    beat = worker.heartbeat(relay_key)
    assert beat["leaseRevoked"] == grant["leaseId"]
    assert worker.revoke(relay_key)["depositRevoked"] == deposit["depositId"]


def test_worker_certificate_cannot_unlock_or_renew(certs, escrow_url):
    worker = certs.client(escrow_url, certs.worker)
    for path in ("/escrow/unlock", "/escrow/renew"):
        with pytest.raises(EscrowHTTPError) as excinfo:
            worker.request("POST", path, unlock_body("ab" * 32, crypto.generate_session_keypair()))
        assert excinfo.value.status == 403 and excinfo.value.code == "forbidden"
    with pytest.raises(EscrowHTTPError) as excinfo:
        worker.request("GET", "/escrow/leases")
    assert excinfo.value.status == 403


def test_gateway_certificate_cannot_deposit_or_heartbeat(certs, escrow_url):
    gateway = certs.client(escrow_url, certs.gateway)
    for path in ("/escrow", "/escrow/heartbeat"):
        with pytest.raises(EscrowHTTPError) as excinfo:
            gateway.request("POST", path, {})
        assert excinfo.value.status == 403


def test_gateway_may_revoke_leases_but_only_an_operator_may_revoke_a_deposit(certs, escrow_url):
    worker = WorkerClient(certs.client(escrow_url, certs.worker), crypto.generate_signing_keypair())
    worker.deposit("cd" * 32, crypto.generate_signing_keypair().secret)
    with pytest.raises(EscrowHTTPError) as excinfo:
        certs.client(escrow_url, certs.gateway).request(
            "POST", "/escrow/revoke", {"relayKey": "cd" * 32, "deposit": True}
        )
    assert excinfo.value.status == 403
    result = certs.client(escrow_url, certs.operator).request(
        "POST", "/escrow/revoke", {"relayKey": "cd" * 32, "deposit": True, "reason": "compromised worker"}
    )
    assert result["depositRevoked"] and Deposit.objects.get().state == "revoked"


def test_certificate_without_a_role_is_refused(certs, escrow_url):
    with pytest.raises(EscrowHTTPError) as excinfo:
        certs.client(escrow_url, certs.no_role).request("GET", "/policy")
    assert excinfo.value.status == 403 and excinfo.value.code == "client-role-missing"


def _raw_request(url: str, context: ssl.SSLContext) -> int:
    host, port = url.removeprefix("https://").split(":")
    connection = http.client.HTTPSConnection(host, int(port), context=context, timeout=5)
    try:
        connection.request("GET", "/policy")
        return connection.getresponse().status
    finally:
        connection.close()


def test_client_without_certificate_is_refused(certs, escrow_url):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(str(certs.ca.cert))
    # TLS 1.3 finishes the client's side of the handshake before the server checks the certificate, so the
    # refusal surfaces on the first read: either way no HTTP response is ever produced.
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected, socket.timeout)):
        _raw_request(escrow_url, context)


def test_certificate_from_another_ca_is_refused(certs, escrow_url):
    client = certs.client(escrow_url, certs.foreign_gateway)
    with pytest.raises(EscrowUnavailable):
        client.request("POST", "/escrow/unlock", unlock_body("ab" * 32, crypto.generate_session_keypair()))
    assert not Lease.objects.exists()


def test_tls12_is_refused(certs, escrow_url):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(str(certs.ca.cert))
    context.load_cert_chain(str(certs.gateway.cert), str(certs.gateway.key))
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _raw_request(escrow_url, context)


def test_server_is_verified_against_the_private_ca(certs, escrow_url, tmp_path):
    # A client that trusts only some other CA refuses the escrow's server certificate.
    from escrow.transport import MTLSClient

    client = MTLSClient(
        escrow_url, ca=str(certs.foreign_ca.cert), cert=str(certs.gateway.cert), key=str(certs.gateway.key)
    )
    with pytest.raises(EscrowUnavailable):
        client.request("GET", "/policy")


def test_policy_is_signed_and_pinning_detects_another_escrow(certs, escrow_url):
    worker = WorkerClient(
        certs.client(escrow_url, certs.worker),
        crypto.generate_signing_keypair(),
        pinned_verify_key=escrow_keys().verify_key,
    )
    policy = worker.policy()
    assert policy["escrowPublicKey"] == escrow_keys().public_key.hex() and policy["version"] == 1
    impostor = WorkerClient(
        certs.client(escrow_url, certs.worker),
        crypto.generate_signing_keypair(),
        pinned_verify_key=crypto.generate_signing_keypair().public,
    )
    with pytest.raises(PolicyError):
        impostor.policy()


def test_health_and_metrics_are_served_but_the_admin_is_not(certs, escrow_url):
    client = certs.client(escrow_url, certs.operator)
    assert client.request("GET", "/health") == {"status": "ok"}
    with pytest.raises(EscrowHTTPError) as excinfo:
        client.request("GET", "/admin/")
    assert excinfo.value.status == 404


def test_each_client_certificate_is_rate_limited(certs, escrow_url, escrow_settings):
    escrow_settings.HYPERTUNA_ESCROW_RATELIMIT_PER_MINUTE = 3
    gateway = certs.client(escrow_url, certs.gateway)
    for _ in range(3):
        gateway.request("GET", "/policy")
    with pytest.raises(EscrowHTTPError) as excinfo:
        gateway.request("GET", "/policy")
    assert excinfo.value.status == 429 and excinfo.value.code == "rate-limited"
    # Another client's budget is its own.
    assert certs.client(escrow_url, certs.operator).request("GET", "/policy")["policy"]["version"] == 1


def test_escrow_openapi_schema_generates(escrow_url):
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator(urlconf="escrow.service_urls").get_schema(request=None, public=True)
    assert {"/escrow", "/escrow/unlock", "/escrow/heartbeat", "/escrow/revoke", "/policy"} <= set(schema["paths"])
    assert "412" in schema["paths"]["/escrow/unlock"]["post"]["responses"]


def test_a_revoked_certificate_is_refused_even_though_the_ca_signed_it(certs, escrow_url, escrow_settings):
    from escrow.pki import identity_from_pem

    fingerprint = identity_from_pem(certs.gateway.cert.read_text()).fingerprint
    colons = ":".join(fingerprint[i : i + 2] for i in range(0, len(fingerprint), 2)).upper()
    escrow_settings.HYPERTUNA_ESCROW_REVOKED_CERTS = [colons.lower().replace(":", "")]
    with pytest.raises(EscrowHTTPError) as excinfo:
        certs.client(escrow_url, certs.gateway).request("GET", "/policy")
    assert excinfo.value.status == 403 and excinfo.value.code == "client-certificate-revoked"
    assert certs.client(escrow_url, certs.operator).request("GET", "/policy")
