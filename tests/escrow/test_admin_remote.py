"""The gateway admin shows the escrow's own records read over mutual TLS (the escrow role keeps its own
database): a real listener serves the read endpoints; the admin and the dashboard render what it answers,
and nothing of a key is in any answer or page."""

from __future__ import annotations

import base64

import pytest
from django.contrib.auth import get_user_model
from django.urls import include, path

from escrow import admin_remote, audit, service_urls
from escrow.api import admin_read
from escrow.models import Deposit
from escrow.transport import EscrowHTTPError
from hypertuna.exceptions import ApiError
from tests.escrow.conftest import unlock
from tests.escrow.mtls import escrow_listener, make_pki

# This module is the URLconf of its tests: the escrow role's routes (for the listener thread) and the
# gateway's (for the admin client), as the two processes would serve them.
urlpatterns = [*service_urls.urlpatterns, *admin_read.urlpatterns, path("", include("hypertuna.urls"))]

pytestmark = [pytest.mark.urls(__name__), pytest.mark.django_db(transaction=True)]


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def escrow_url(certs, escrow_settings):
    with escrow_listener(certs) as url:
        yield url


@pytest.fixture
def records(worker, clock):
    """A deposit, a refused unlock, a granted lease, and a verification run."""
    worker.deposit()
    clock.advance(91)
    with pytest.raises(ApiError):  # refused (and audited): a peer is reported healthy
        unlock(clock, worker.relay_key, healthy=2)
    grant, _ = unlock(clock, worker.relay_key)
    audit.verify(record=True)
    return worker, grant


@pytest.fixture
def gateway_admin(client, settings, certs, escrow_url):
    settings.HYPERTUNA_ESCROW_URL = escrow_url
    settings.HYPERTUNA_ESCROW_CA = str(certs.ca.cert)
    settings.HYPERTUNA_ESCROW_CLIENT_CERT = str(certs.gateway.cert)
    settings.HYPERTUNA_ESCROW_CLIENT_KEY = str(certs.gateway.key)
    user = get_user_model().objects.create_superuser("op", "op@example.org", "pw-0123456789")
    client.force_login(user)
    return client


def _secrets(worker) -> list[str]:
    sealed = bytes(Deposit.objects.get().sealed_secret)
    return [worker.writer.secret.hex(), sealed.hex(), base64.b64encode(sealed).decode()]


def test_read_endpoints_answer_gateway_certificates_without_key_material(certs, escrow_url, records):
    worker, grant = records
    gateway = certs.client(escrow_url, certs.gateway)
    deposits = gateway.request("GET", "/escrow/admin/deposits")["rows"]
    assert [d["relay_key"] for d in deposits] == [worker.relay_key]
    leases = gateway.request("GET", "/escrow/admin/leases?usable=yes")["rows"]
    assert [lease["id"] for lease in leases] == [grant["leaseId"]]
    refused = gateway.request("GET", "/escrow/admin/audit?action=unlock-refused")["rows"]
    assert len(refused) == 1 and refused[0]["inputs"] is not None
    (verification,) = gateway.request("GET", "/escrow/admin/verifications")["rows"]
    assert verification["ok"] is True
    summary = gateway.request("GET", "/escrow/admin/summary")
    assert summary["refusals_24h"] == 1 and summary["active_deposits"] == 1
    answers = str([deposits, leases, refused, summary])
    for secret in _secrets(worker):
        assert secret not in answers
    assert "session_key_hash" not in answers and "sealed" not in answers

    with pytest.raises(EscrowHTTPError) as excinfo:
        certs.client(escrow_url, certs.worker).request("GET", "/escrow/admin/deposits")
    assert excinfo.value.status == 403
    with pytest.raises(EscrowHTTPError) as excinfo:
        gateway.request("GET", "/escrow/admin/bindings")
    assert excinfo.value.status == 404 and excinfo.value.code == "not-found"


def test_admin_lists_show_the_escrows_records(gateway_admin, records):
    worker, grant = records
    assert admin_remote.is_remote()
    pages = {
        url: gateway_admin.get(url).content.decode()
        for url in (
            "/admin/escrow/deposit/",
            "/admin/escrow/lease/?usable=yes",
            "/admin/escrow/auditentry/?action__exact=unlock-refused",
            "/admin/escrow/auditverification/",
        )
    }
    assert all("at the escrow" in page for page in pages.values())
    assert worker.relay_key in pages["/admin/escrow/deposit/"]
    assert grant["leaseId"] in pages["/admin/escrow/lease/?usable=yes"]
    assert 'data-remote-rows="1"' in pages["/admin/escrow/auditentry/?action__exact=unlock-refused"]
    assert "<td>unlock-granted</td>" not in pages["/admin/escrow/auditentry/?action__exact=unlock-refused"]
    assert 'data-remote-rows="1"' in pages["/admin/escrow/auditverification/"]
    for secret in _secrets(worker):
        assert all(secret not in page for page in pages.values())

    dashboard = gateway_admin.get("/admin/").content.decode()
    assert 'data-metric="leases-active" href="/admin/escrow/lease/?usable=yes">1<' in dashboard
    assert 'data-metric="refusals-24h"' in dashboard and ">verified<" in dashboard


def test_an_unreachable_escrow_is_said_not_a_500(client, settings, certs, records):
    settings.HYPERTUNA_ESCROW_URL = "https://127.0.0.1:9"  # nothing listens there
    settings.HYPERTUNA_ESCROW_CA = str(certs.ca.cert)
    settings.HYPERTUNA_ESCROW_CLIENT_CERT = str(certs.gateway.cert)
    settings.HYPERTUNA_ESCROW_CLIENT_KEY = str(certs.gateway.key)
    client.force_login(get_user_model().objects.create_superuser("op", "op@example.org", "pw-0123456789"))
    page = client.get("/admin/escrow/lease/")
    assert page.status_code == 200 and "data-escrow-error" in page.content.decode()
    dashboard = client.get("/admin/")
    assert dashboard.status_code == 200 and 'data-metric="escrow-summary">unreadable<' in dashboard.content.decode()
