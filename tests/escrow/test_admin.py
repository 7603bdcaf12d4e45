"""The escrow admin: read-only views, no key material, revoke actions behind a confirmation page."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from escrow.models import AuditEntry, Deposit, Lease
from tests.escrow.conftest import unlock

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client):
    user = get_user_model().objects.create_superuser("alice", "alice@example.org", "pw-0123456789")
    client.force_login(user)
    return client


@pytest.fixture
def leased(worker, clock):
    worker.deposit()
    clock.advance(91)
    grant, _ = unlock(clock, worker.relay_key)
    return worker, grant


def test_lists_render_with_the_policy_and_without_key_material(staff_client, leased):
    worker, grant = leased
    for url in (
        "/admin/escrow/deposit/",
        "/admin/escrow/lease/",
        "/admin/escrow/auditentry/",
        "/admin/escrow/workerbinding/",
        "/admin/escrow/auditentry/?action__exact=unlock-granted",
        "/admin/escrow/lease/?usable=yes",
        "/admin/escrow/workerbinding/?silence=silent",
    ):
        response = staff_client.get(url)
        assert response.status_code == 200, url
        body = response.content.decode()
        assert worker.writer.secret.hex() not in body
    assert "Escrow policy v1" in staff_client.get("/admin/escrow/deposit/").content.decode()
    deposit = Deposit.objects.get()
    page = staff_client.get(f"/admin/escrow/deposit/{deposit.pk}/change/").content.decode()
    assert "sealed" not in page.lower() and worker.writer.public.hex() in page
    lease_page = staff_client.get(f"/admin/escrow/lease/{grant['leaseId']}/change/")
    assert lease_page.status_code == 200


def test_audit_log_is_read_only(staff_client, leased):
    row = AuditEntry.objects.first()
    assert staff_client.get("/admin/escrow/auditentry/add/").status_code == 403
    assert staff_client.get(f"/admin/escrow/auditentry/{row.pk}/delete/").status_code == 403
    page = staff_client.get(f"/admin/escrow/auditentry/{row.pk}/change/").content.decode()
    assert 'name="_save"' not in page


def test_lease_revoke_asks_for_confirmation_then_revokes_and_audits(staff_client, leased):
    _, grant = leased
    form = {"action": "revoke_leases", "_selected_action": [grant["leaseId"]]}
    response = staff_client.post("/admin/escrow/lease/", form)
    assert response.status_code == 200 and b"Yes, revoke" in response.content
    assert Lease.objects.get(id=grant["leaseId"]).state == "active"
    staff_client.post("/admin/escrow/lease/", {**form, "confirmed": "yes"})
    assert Lease.objects.get(id=grant["leaseId"]).state == "revoked"
    assert AuditEntry.objects.filter(action="revoke", actor="operator:alice", lease_id=grant["leaseId"]).exists()


def test_deposit_revoke_from_the_admin(staff_client, leased):
    deposit = Deposit.objects.get()
    staff_client.post(
        "/admin/escrow/deposit/",
        {"action": "revoke_deposits", "_selected_action": [str(deposit.pk)], "confirmed": "yes"},
    )
    assert Deposit.objects.get().state == "revoked" and Lease.objects.get().state == "revoked"


def test_operator_commands_rebind_and_revoke(worker, clock, capsys):
    from django.core.management import CommandError, call_command

    from escrow import crypto
    from escrow.models import WorkerBinding

    worker.deposit()
    with pytest.raises(CommandError, match="--reason"):
        call_command("escrow_relay", "revoke-deposit", worker.relay_key)
    new_key = crypto.generate_signing_keypair().public.hex()
    call_command("escrow_relay", "rebind", worker.relay_key, new_key, reason="laptop replaced", operator="alice")
    assert WorkerBinding.objects.get().worker_key == new_key
    assert AuditEntry.objects.filter(action="rebind", actor="operator:alice").exists()
    assert Deposit.objects.get().state == "revoked"
    call_command("escrow_relay", "status", worker.relay_key)
    assert '"bound": true' in capsys.readouterr().out
    with pytest.raises(CommandError, match="invalid-encoding"):
        call_command("escrow_relay", "rebind", worker.relay_key, "xyz", reason="typo")
