"""A client path belongs to one relay: the first claim wins, the npub of a path is its relay owner's, bad
paths are refused, and only an operator moves a path (audited, with no stale cached resolution)."""

from __future__ import annotations

import importlib

import pytest
from django.apps import apps
from django.db import IntegrityError, transaction
from django.urls import reverse
from django.utils import timezone

from hypertuna.compat.relaykeys import hex_to_npub
from relays import paths, selectors
from relays.models import PathReassignment, Relay, RelayPath
from tests.conftest import hex_key, make_registration, signed

pytestmark = pytest.mark.django_db

VICTIM, ATTACKER = "a1" * 32, "b2" * 32
V_NPUB, A_NPUB = hex_to_npub(VICTIM), hex_to_npub(ATTACKER)


def register(api, relay_key: str, **metadata):
    registration = make_registration(relay_key, metadata={"requiresAuth": True, **metadata})
    return api.post("/api/relays", signed(registration), format="json")


def error(response) -> str:
    return response.json()["error"]


@pytest.fixture
def victim(api):
    key = hex_key()
    response = register(api, key, gatewayPath=f"{V_NPUB}/chat", ownerPubkey=VICTIM, pathAliases=["chat-room"])
    assert response.status_code == 200, response.json()
    return key


def test_a_path_held_by_another_relay_is_refused_with_409(api, victim):
    attacker = hex_key()
    for _ in range(3):  # re-registering does not flip it either
        response = register(api, attacker, gatewayPath=f"{V_NPUB}/chat", ownerPubkey=VICTIM)
        assert response.status_code == 409 and error(response) == "gateway-path-taken"
        assert response.json()["path"] == f"{V_NPUB}/chat"
    assert not Relay.objects.filter(relay_key=attacker).exists()  # nothing of the refused registration stays
    from django.core.cache import cache

    cache.clear()  # the path cache expired
    assert selectors.resolve_path(f"/{V_NPUB}/chat") == victim
    assert selectors.resolve_path(f"{V_NPUB}:chat") == victim
    assert register(api, victim, gatewayPath=f"{V_NPUB}/chat", ownerPubkey=VICTIM).status_code == 200


def test_an_alias_held_by_another_relay_is_refused_with_409(api, victim):
    response = register(api, hex_key(), gatewayPath=f"{A_NPUB}/mine", ownerPubkey=ATTACKER, pathAliases=["chat-room"])
    assert response.status_code == 409 and error(response) == "gateway-path-taken"
    assert selectors.resolve_path("/chat-room") == victim


def test_registering_the_npub_identifier_of_a_claimed_path_is_refused(api, victim):
    response = register(api, f"{V_NPUB}:chat")
    assert response.status_code == 409 and error(response) == "gateway-path-taken"
    assert selectors.resolve_path(f"/{V_NPUB}/chat") == victim


def test_a_path_in_another_owners_namespace_is_refused(api, victim):
    for metadata in (
        {"gatewayPath": f"{V_NPUB}/other", "ownerPubkey": ATTACKER},
        {"gatewayPath": f"{V_NPUB}/other", "publicIdentifier": f"{A_NPUB}:other"},
        {"gatewayPath": f"{V_NPUB}/other"},  # names no owner at all
        {"gatewayPath": f"{A_NPUB}/ok", "ownerPubkey": ATTACKER, "pathAliases": [f"{V_NPUB}/chat"]},
    ):
        response = register(api, hex_key(), **metadata)
        assert response.status_code == 403 and error(response) == "gateway-path-not-owned", metadata
    response = register(api, f"{V_NPUB}:mine", ownerPubkey=ATTACKER)
    assert response.status_code == 403 and error(response) == "gateway-path-not-owned"


def test_a_hex_gateway_path_must_be_the_relays_own_key(api, victim):
    response = register(api, hex_key(), gatewayPath=victim)
    assert response.status_code == 403 and error(response) == "gateway-path-not-owned"


@pytest.mark.parametrize(
    "bad",
    [
        "../admin",
        "..",
        "a/../b",
        "//host",
        "//host/x",
        "a//b",
        "a?token=b#c",
        "a#b",
        "%2e%2e/admin",
        "a b",
        "a\x01b",
        "admin",
        "api/relays",
        "drive/x",
        ".hidden",
        "a/b/c/d/e",
        "x" * 201,
        42,
        ["a"],
    ],
)
def test_malformed_gateway_paths_are_refused_with_400(api, bad):
    response = register(api, hex_key(), gatewayPath=bad)
    assert response.status_code == 400 and error(response) == "invalid-gateway-path", response.json()
    response = register(api, hex_key(), gatewayPath="fine", pathAliases=[bad])
    assert response.status_code == 400 and error(response) == "invalid-gateway-path", response.json()


def test_npubs_with_a_bad_checksum_are_refused(api):
    broken = V_NPUB[:-1] + ("q" if V_NPUB[-1] != "q" else "p")
    response = register(api, f"{broken}:chat")
    assert response.status_code == 400 and error(response) == "invalid-relay-key"
    response = register(api, hex_key(), gatewayPath=f"{broken}/chat", ownerPubkey=VICTIM)
    assert response.status_code == 400 and error(response) == "invalid-gateway-path"
    response = register(api, hex_key(), ownerPubkey=broken)
    assert response.status_code == 400 and error(response) == "invalid-owner-pubkey"


@pytest.mark.parametrize("order", ["hex-first", "identifier-first"])
def test_a_runtime_registering_one_relay_under_both_keys_is_accepted(api, order):
    """The desktop runtime registers its relay as ``npub…:name`` and as its hex key, each naming the other
    as an alias; neither alias takes the other's own path."""
    hex_relay, named = hex_key(), f"{V_NPUB}:both"
    by_identifier = {"gatewayPath": f"{V_NPUB}/both", "pathAliases": [hex_relay], "publicIdentifier": named}
    by_hex = {"gatewayPath": hex_relay, "pathAliases": [f"{V_NPUB}/both"], "publicIdentifier": named}
    steps = [(hex_relay, by_hex), (named, by_identifier)]
    for key, metadata in steps if order == "hex-first" else steps[::-1]:
        assert register(api, key, **metadata).status_code == 200
    assert selectors.resolve_path(f"/{V_NPUB}/both") == named
    assert selectors.resolve_path(f"/{hex_relay}") == hex_relay


def test_claims_outlive_an_expired_registration(api, victim):
    Relay.objects.filter(relay_key=victim).update(expires_at=timezone.now(), status=Relay.Status.EXPIRED)
    response = register(api, hex_key(), gatewayPath=f"{V_NPUB}/chat", ownerPubkey=VICTIM)
    assert response.status_code == 409


def test_a_path_a_relay_stops_naming_is_released(api, victim):
    assert register(api, victim, gatewayPath=f"{V_NPUB}/renamed", ownerPubkey=VICTIM).status_code == 200
    assert not RelayPath.objects.filter(path__in=[f"{V_NPUB}/chat", "chat-room"]).exists()
    other = hex_key()
    assert register(api, other, gatewayPath=f"{V_NPUB}/chat", ownerPubkey=VICTIM).status_code == 200
    assert selectors.resolve_path(f"/{V_NPUB}/chat") == other


def test_the_database_enforces_one_relay_per_path(victim):
    other = Relay.objects.create(relay_key=hex_key(), expires_at=timezone.now())
    with pytest.raises(IntegrityError), transaction.atomic():
        RelayPath.objects.create(path=f"{V_NPUB}/chat", relay=other, source=RelayPath.Source.GATEWAY_PATH)


def test_a_concurrent_claim_that_committed_first_wins(api, victim, monkeypatch):
    """The lock read missed a claim committed in between: the insert hits the constraint and answers 409."""
    real = RelayPath.objects.select_for_update

    def blind(*args, **kwargs):
        return real(*args, **kwargs).none()

    monkeypatch.setattr(RelayPath.objects, "select_for_update", blind)
    response = register(api, hex_key(), gatewayPath=f"{V_NPUB}/chat", ownerPubkey=VICTIM)
    assert response.status_code == 409 and error(response) == "gateway-path-taken"


def test_operator_reassignment_moves_the_path_at_once_and_is_audited(api, victim, django_capture_on_commit_callbacks):
    heir = hex_key()
    assert register(api, heir, gatewayPath=f"{V_NPUB}/heir", ownerPubkey=VICTIM).status_code == 200
    assert selectors.resolve_path(f"/{V_NPUB}/chat") == victim  # cached now
    with django_capture_on_commit_callbacks(execute=True):
        paths.reassign_path(path=f"{V_NPUB}:chat", relay_key=heir, operator="alice", reason="owner moved hosts")
    assert selectors.resolve_path(f"/{V_NPUB}/chat") == heir  # no stale cached holder
    row = PathReassignment.objects.get()
    assert (row.path, row.from_relay_key, row.to_relay_key, row.operator) == (f"{V_NPUB}/chat", victim, heir, "alice")
    # The previous holder cannot take it back; the new holder keeps it without naming it.
    response = register(api, victim, gatewayPath=f"{V_NPUB}/chat", ownerPubkey=VICTIM)
    assert response.status_code == 409
    assert register(api, heir, gatewayPath=f"{V_NPUB}/heir", ownerPubkey=VICTIM).status_code == 200
    assert selectors.resolve_path(f"/{V_NPUB}/chat") == heir


def test_reassignment_needs_a_known_relay_and_a_reason(victim):
    with pytest.raises(paths.ApiError, match="No relay"):
        paths.reassign_path(path="chat-room", relay_key=hex_key(), operator="alice", reason="x")
    with pytest.raises(paths.ApiError, match="why"):
        paths.reassign_path(path="chat-room", relay_key=victim, operator="alice", reason=" ")
    assert not PathReassignment.objects.exists()


def test_admin_reassign_action_confirms_then_reassigns(admin_client, api, victim, django_capture_on_commit_callbacks):
    heir = hex_key()
    assert register(api, heir, gatewayPath="heir-room").status_code == 200
    row = RelayPath.objects.get(path="chat-room")
    url = reverse("admin:relays_relaypath_changelist")
    page = admin_client.post(url, {"action": "reassign", "_selected_action": [row.pk]})
    assert page.status_code == 200 and b"Reassign /chat-room" in page.content
    assert selectors.resolve_path("chat-room") == victim
    bad = admin_client.post(
        url,
        {"action": "reassign", "_selected_action": [row.pk], "confirmed": "yes", "relay_key": "nope", "reason": "r"},
    )
    assert bad.status_code == 200 and b"No relay" in bad.content
    with django_capture_on_commit_callbacks(execute=True):
        done = admin_client.post(
            url,
            {"action": "reassign", "_selected_action": [row.pk], "confirmed": "yes", "relay_key": heir, "reason": "r"},
        )
    assert done.status_code == 302
    assert selectors.resolve_path("chat-room") == heir
    assert PathReassignment.objects.get().operator == "admin"
    for name in ("admin:relays_relaypath_changelist", "admin:relays_pathreassignment_changelist"):
        assert admin_client.get(reverse(name)).status_code == 200


def test_migration_gives_a_shared_path_to_the_relay_that_had_it_first():
    migration = importlib.import_module("relays.migrations.0003_relay_paths")
    now = timezone.now()
    first = Relay.objects.create(
        relay_key=hex_key(), gateway_path=f"{V_NPUB}/chat", expires_at=now, first_registered_at=now
    )
    later = Relay.objects.create(
        relay_key=hex_key(),
        gateway_path=f"{V_NPUB}:chat",
        expires_at=now,
        first_registered_at=now + timezone.timedelta(seconds=1),
    )
    broken = Relay.objects.create(relay_key=hex_key(), gateway_path="a\x01b", expires_at=now, first_registered_at=now)
    migration.claim_existing_paths(apps, None)
    assert RelayPath.objects.get(path=f"{V_NPUB}/chat").relay == first
    assert set(RelayPath.objects.filter(relay=later).values_list("path", flat=True)) == {later.relay_key}
    assert set(RelayPath.objects.filter(relay=broken).values_list("path", flat=True)) == {broken.relay_key}
