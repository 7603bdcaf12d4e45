"""relayCores / relayCoresMode in signed registrations, as real workers send them."""

from __future__ import annotations

import pytest

from replicas import services
from replicas.declarations import MAX_RELAY_CORES, core_type_for_role
from replicas.models import CoreType, MirrorCore, Replica
from tests.conftest import hex_key, make_registration, signed
from tests.relays.test_trust_blind_peer import z32

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _no_trust_push(monkeypatch):
    monkeypatch.setattr("relays.registration._enqueue_trust", lambda relay_key, *, withdraw=False: None)


def register(api, relay_key, **fields):
    return api.post("/api/relays", signed(make_registration(relay_key, **fields)), format="json")


def real_worker_cores(view, system, local):
    # The shape of hyperpipe-core's GatewayService#collectRelayCoreMetadata (z-base-32 keys).
    return [
        {"key": z32(local), "role": "autobase"},
        {"key": z32(system), "role": "autobase-system"},
        {"key": z32(local), "role": "autobase-local"},
        {"key": z32(view), "role": "autobase-view"},
        {"key": z32(hex_key()), "role": "autobase-writer-0"},
        {"key": z32(hex_key()), "role": None},
    ]


def test_roles_map_to_core_types():
    assert core_type_for_role("autobase-view") == CoreType.AUTOBASE_VIEW
    assert core_type_for_role("autobase-system") == CoreType.AUTOBASE_SYSTEM
    assert core_type_for_role("autobase-system-core") == CoreType.AUTOBASE_SYSTEM
    for writer in ("autobase", "autobase-local", "autobase-writer", "autobase-writer-3", "autobase-core"):
        assert core_type_for_role(writer) == CoreType.AUTOBASE_WRITER
    assert core_type_for_role("drive-metadata") == CoreType.HYPERDRIVE_METADATA
    assert core_type_for_role("drive-blobs") == CoreType.HYPERDRIVE_BLOBS
    assert core_type_for_role("pfp-drive-blobs") == CoreType.PFP_DRIVE
    assert core_type_for_role("something-new") == CoreType.UNKNOWN


def test_relay_cores_are_stored_typed_and_the_view_gets_a_replica(api):
    relay, view, system, local = hex_key(), hex_key(), hex_key(), hex_key()
    response = register(api, relay, relayCores=real_worker_cores(view, system, local), relayCoresMode="merge")
    assert response.status_code == 200, response.json()
    cores = {c.core_key: c for c in MirrorCore.objects.filter(relay_key=relay)}
    assert len(cores) == 5, "duplicates collapse; keys are stored as hex"
    assert cores[view].core_type == CoreType.AUTOBASE_VIEW and cores[view].role == "autobase-view"
    assert cores[system].core_type == CoreType.AUTOBASE_SYSTEM
    assert cores[local].core_type == CoreType.AUTOBASE_WRITER and cores[local].role == "autobase"
    assert sum(c.core_type == CoreType.UNKNOWN for c in cores.values()) == 1
    assert all(c.declared_by_registration and not c.reported_by_bridge for c in cores.values())
    replica = Replica.objects.get(relay_key=relay)
    assert replica.view_core_key == view, "a worker that never sends mirror metadata still gets a replica"


def test_the_replicas_api_shows_declared_cores(api, admin_client):
    relay, view = hex_key(), hex_key()
    assert register(api, relay, relayCores=[{"key": view, "role": "autobase-view"}]).status_code == 200
    body = admin_client.get("/api/blind-peer/replicas?cores=true").json()
    (entry,) = [r for r in body["replicas"] if r["relayKey"] == relay]
    (core,) = entry["cores"]
    assert core["coreKey"] == view and core["role"] == "autobase-view" and core["declaredByRegistration"] is True


def test_merge_keeps_earlier_cores_and_replace_drops_undeclared_ones(api):
    relay, a, b, c = hex_key(), hex_key(), hex_key(), hex_key()
    assert register(api, relay, relayCores=[{"key": a, "role": "autobase-writer"}]).status_code == 200
    assert register(api, relay, relayCores=[{"key": b, "role": "autobase-view"}]).status_code == 200
    assert set(MirrorCore.objects.filter(relay_key=relay).values_list("core_key", flat=True)) == {a, b}
    # A core the blind peer holds keeps its row when a replace no longer lists it.
    services.record_mirror_added(data={"coreKey": a, "referrer": relay, "relayKey": relay})
    response = register(api, relay, relayCores=[{"key": c, "role": "autobase-view"}], relayCoresMode="replace")
    assert response.status_code == 200
    rows = {r.core_key: r for r in MirrorCore.objects.filter(relay_key=relay)}
    assert set(rows) == {a, c}
    assert not rows[a].declared_by_registration and rows[c].declared_by_registration
    # Without relayCores a registration leaves the declarations alone.
    assert register(api, relay).status_code == 200
    assert MirrorCore.objects.get(core_key=c).declared_by_registration


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"relayCores": [{"key": "00" * 32}] * (MAX_RELAY_CORES + 1)}, "at most"),
        ({"relayCores": [{"key": "zz-not-a-key", "role": "autobase"}]}, "relayCores[0].key"),
        ({"relayCores": [{"key": "ab" * 31}]}, "relayCores[0].key"),
        ({"relayCores": [{"role": "autobase"}]}, "relayCores[0].key"),
        ({"relayCores": ["ab" * 32]}, "relayCores[0] must be an object"),
        ({"relayCores": {"key": "ab" * 32}}, "must be a list"),
        ({"relayCores": [{"key": "ab" * 32, "role": 7}]}, "role"),
        ({"relayCores": [{"key": "ab" * 32, "role": "x" * 65}]}, "role"),
        ({"relayCores": [], "relayCoresMode": "upsert"}, "relayCoresMode"),
        ({"relayCoresMode": ["merge"]}, "relayCoresMode"),
    ],
)
def test_hostile_relay_cores_are_refused_with_a_reason(api, fields, needle):
    relay = hex_key()
    response = register(api, relay, **fields)
    assert response.status_code == 400
    body = response.json()
    assert body["error"] in ("invalid-relay-cores", "invalid-relay-cores-mode") and needle in body["message"]
    assert not MirrorCore.objects.exists() and not Replica.objects.exists()


def test_a_core_of_another_relay_is_not_taken_over(api):
    relay_a, relay_b, view = hex_key(), hex_key(), hex_key()
    assert register(api, relay_a, relayCores=[{"key": view, "role": "autobase-view"}]).status_code == 200
    assert register(api, relay_b, relayCores=[{"key": view, "role": "autobase-view"}]).status_code == 200
    assert MirrorCore.objects.get(core_key=view).relay_key == relay_a
    assert not Replica.objects.filter(relay_key=relay_b).exists()


def test_a_named_relay_claims_cores_the_blind_peer_attributed_by_referrer(api):
    relay = "npub1yg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3zyg3q2pw2gm:named"
    autobase, writer = hex_key(), hex_key()
    # The blind peer saw the Autobase key as referrer before the registration named it.
    services.record_mirror_added(data={"coreKey": autobase, "referrer": autobase, "relayKey": autobase})
    assert MirrorCore.objects.get(core_key=autobase).relay_key == autobase
    assert register(api, relay, relayCores=[{"key": z32(autobase), "role": "autobase"}]).status_code == 200
    assert MirrorCore.objects.get(core_key=autobase).relay_key == relay
    # Later cores with that referrer go to the named relay.
    services.record_mirror_added(data={"coreKey": writer, "referrer": autobase, "relayKey": autobase})
    assert MirrorCore.objects.get(core_key=writer).relay_key == relay
