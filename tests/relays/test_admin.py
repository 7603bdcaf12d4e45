from __future__ import annotations

import pytest
from django.urls import reverse

from hypertuna.compat import hmac_hex
from relays import services
from relays.models import RelayToken
from tests.conftest import SECRET, hex_key, make_registration

pytestmark = pytest.mark.django_db


@pytest.fixture
def relays():
    keys = []
    for i in range(5):
        key = hex_key()
        reg = make_registration(key, peers=[hex_key(), hex_key()], metadata={"name": f"relay {i}"})
        services.register_relay(registration=reg, signature=hmac_hex(SECRET, reg))
        for _ in range(3):
            services.issue_token(relay_key=key, relay_auth_token="x")
        keys.append(key)
    return keys


# Query counts are pinned: a changelist must not grow with the number of rows (no N+1).
@pytest.mark.parametrize(
    ("url_name", "max_queries"),
    [
        ("admin:relays_relay_changelist", 8),
        ("admin:relays_registration_changelist", 8),
        ("admin:relays_peer_changelist", 8),
        ("admin:relays_relaytoken_changelist", 8),
        ("admin:relays_hostpolicy_changelist", 8),
        ("admin:relays_hostrule_changelist", 8),
    ],
)
def test_admin_changelists_load_with_bounded_queries(
    admin_client, relays, django_assert_max_num_queries, url_name, max_queries
):
    with django_assert_max_num_queries(max_queries):
        response = admin_client.get(reverse(url_name))
    assert response.status_code == 200


@pytest.mark.parametrize("flt", ["live", "lapsed", "offline-1h", "offline-1d"])
def test_relay_filters_load(admin_client, relays, flt):
    assert admin_client.get(reverse("admin:relays_relay_changelist"), {"registration": flt}).status_code == 200


def test_relay_detail_page_loads(admin_client, relays):
    from relays.models import Relay

    relay = Relay.objects.first()
    assert admin_client.get(reverse("admin:relays_relay_change", args=[relay.pk])).status_code == 200


def test_revoke_action_asks_for_confirmation_then_revokes(admin_client, relays):
    ids = list(RelayToken.objects.values_list("pk", flat=True)[:2])
    url = reverse("admin:relays_relaytoken_changelist")
    confirm = admin_client.post(url, {"action": "revoke_tokens", "_selected_action": ids})
    assert confirm.status_code == 200 and b"Revoke these tokens?" in confirm.content
    assert not RelayToken.objects.filter(state=RelayToken.State.REVOKED).exists()
    done = admin_client.post(url, {"action": "revoke_tokens", "_selected_action": ids, "confirmed": "yes"})
    assert done.status_code == 302
    assert set(RelayToken.objects.filter(state=RelayToken.State.REVOKED).values_list("pk", flat=True)) == set(ids)


def test_revoke_all_relay_tokens_action(admin_client, relays):
    from relays.models import Relay

    relay = Relay.objects.get(relay_key=relays[0])
    url = reverse("admin:relays_relay_changelist")
    admin_client.post(url, {"action": "revoke_all_tokens", "_selected_action": [relay.pk], "confirmed": "yes"})
    assert RelayToken.objects.filter(relay=relay, state=RelayToken.State.REVOKED).count() == 3
    assert RelayToken.objects.exclude(relay=relay).filter(state=RelayToken.State.REVOKED).count() == 0


def test_admin_requires_staff(client):
    response = client.get(reverse("admin:relays_relay_changelist"))
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
