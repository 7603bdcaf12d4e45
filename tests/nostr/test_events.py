"""Events: NIP-01 id serialization, BIP-340 verification, strict parsing, kind classes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import coincurve
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hypertuna.nostr import (
    MAX_CREATED_AT,
    Event,
    InvalidEvent,
    KindClass,
    compute_id,
    crypto,
    is_addressable_kind,
    is_ephemeral_kind,
    is_regular_kind,
    is_replaceable_kind,
    kind_class,
    serialize_for_id,
    sign_event,
    supersedes,
    validate_event,
    verify_event,
    verify_signature,
)
from tests.nostr.factories import event_dict, make_event, pubkey_hex, secret_key

VECTORS = Path(__file__).parent / "vectors"


# A real kind-1 note from the public network (non-ASCII, emoji, newlines, an apostrophe, e/p tags).
# Its id is the sha256 of the NIP-01 serialization computed by the author's client and its signature
# verifies over that id, so it pins the serialization independently of this code base.
def _mainnet_note() -> dict[str, Any]:
    note: dict[str, Any] = json.loads((VECTORS / "mainnet-note.json").read_text(encoding="utf-8"))
    return note


# --- serialization -----------------------------------------------------------------------------------


def test_mainnet_note_id_and_signature_verify() -> None:
    event = validate_event(_mainnet_note())
    assert event.computed_id() == "cd720b23163210ebddec88bc4e74d83c9667cdf11b95d376865315c686ed34eb"
    assert verify_signature(event)


def test_mainnet_note_serialization_bytes_are_exact() -> None:
    event = Event.from_json(_mainnet_note())
    serialized = serialize_for_id(event.pubkey, event.created_at, event.kind, event.tags, event.content)
    expected_prefix = (
        '[0,"11d0b66747887ba9a6d34b23eb31287374b45b1a1b161eac54cb183c53e00ef7",1684947090,1,'
        '[["e","f9f30e37adffe3afe12fda2f8db4502ece334f261273a9a0be7e8adb29b35145"],'
        '["p","9eefd04d32ab5da8de12d7b83201578ea095a676acf3a692ec1b0b202ae4e16f"]],'
        "\"I'll take a large lillördag please.\\n\\n😎🤙👇🍻\\n\\nnostr:nevent1"
    ).encode()
    assert serialized.startswith(expected_prefix)
    assert serialized.endswith(b'gncdx20"]')


def test_ids_match_javascript_json_stringify_vectors() -> None:
    vectors = json.loads((VECTORS / "js-event-ids.json").read_text(encoding="utf-8"))["cases"]
    assert len(vectors) >= 7
    for case in vectors:
        args = (case["pubkey"], case["created_at"], case["kind"], case["tags"], case["content"])
        assert serialize_for_id(*args) == case["serialized"].encode("utf-8")
        assert compute_id(*args) == case["id"]


def test_serialization_hand_checked_example() -> None:
    serialized = serialize_for_id("ab" * 32, 1, 7, [["e", "x"], ["t"]], 'a"b\\c/d')
    assert serialized == b'[0,"' + b"ab" * 32 + b'",1,7,[["e","x"],["t"]],"a\\"b\\\\c/d"]'


@pytest.mark.parametrize(
    ("char", "escaped"),
    [
        ("\n", b"\\n"),
        ('"', b'\\"'),
        ("\\", b"\\\\"),
        ("\r", b"\\r"),
        ("\t", b"\\t"),
        ("\b", b"\\b"),
        ("\f", b"\\f"),
    ],
)
def test_nip01_listed_characters_use_short_escapes(char: str, escaped: bytes) -> None:
    assert serialize_for_id("00" * 32, 0, 1, [[char]], char).endswith(b'[["' + escaped + b'"]],"' + escaped + b'"]')


@pytest.mark.parametrize("char", ["é", "☃", "😀", "\u2028", "\u2029", "\x7f", "/", "<", "\u00a0", "\U0010ffff"])
def test_other_printable_characters_are_verbatim_utf8(char: str) -> None:
    assert serialize_for_id("00" * 32, 0, 1, [], char).endswith(b'"' + char.encode("utf-8") + b'"]')


@pytest.mark.parametrize("code", [c for c in range(0x20) if chr(c) not in "\n\r\t\b\f"])
def test_unlisted_control_characters_use_lowercase_u_escapes(code: int) -> None:
    # Deliberate deviation from NIP-01's literal "verbatim" (see serialize_for_id): raw control bytes
    # are not JSON, and every mainstream implementation writes \u00xx.
    assert serialize_for_id("00" * 32, 0, 1, [], chr(code)).endswith(b'"\\u%04x"]' % code)


def _reference_escape(text: str) -> str:
    """An independent, character-by-character rendering of the escaping rule."""
    short = {"\n": "\\n", '"': '\\"', "\\": "\\\\", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}
    out = []
    for char in text:
        if char in short:
            out.append(short[char])
        elif ord(char) < 0x20:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


unicode_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)


@given(content=unicode_text, tag_values=st.lists(unicode_text, min_size=1, max_size=3))
def test_serialization_matches_reference_escaping(content: str, tag_values: list[str]) -> None:
    pubkey = "0f" * 32
    expected = (
        f'[0,"{pubkey}",5,1,[['
        + ",".join(_reference_escape(v) for v in tag_values)
        + "]],"
        + _reference_escape(content)
        + "]"
    )
    serialized = serialize_for_id(pubkey, 5, 1, [tag_values], content)
    assert serialized == expected.encode("utf-8")
    assert json.loads(serialized) == [0, pubkey, 5, 1, [tag_values], content]
    assert compute_id(pubkey, 5, 1, [tag_values], content) == hashlib.sha256(serialized).hexdigest()


# --- signatures --------------------------------------------------------------------------------------


def _bip340_vectors() -> list[dict[str, str]]:
    lines = (VECTORS / "bip340-test-vectors.csv").read_text(encoding="ascii").strip().splitlines()
    header = lines[0].split(",")
    return [dict(zip(header, line.split(","), strict=True)) for line in lines[1:]]


def test_bip340_vectors_verify_as_specified() -> None:
    vectors = _bip340_vectors()
    assert len(vectors) == 15
    for vector in vectors:
        result = crypto.schnorr_verify(
            bytes.fromhex(vector["public key"]), bytes.fromhex(vector["signature"]), bytes.fromhex(vector["message"])
        )
        assert result is (vector["verification result"] == "TRUE"), vector["index"]


def test_bip340_vectors_sign_deterministically() -> None:
    for vector in _bip340_vectors():
        if not vector["secret key"]:
            continue
        secret = bytes.fromhex(vector["secret key"])
        assert crypto.public_key_for(secret) == bytes.fromhex(vector["public key"])
        signature = crypto.schnorr_sign(
            secret, bytes.fromhex(vector["message"]), aux_randomness=bytes.fromhex(vector["aux_rand"])
        )
        assert signature == bytes.fromhex(vector["signature"]), vector["index"]


def test_schnorr_verify_returns_false_on_malformed_inputs() -> None:
    event = make_event()
    pub, sig, msg = bytes.fromhex(event.pubkey), bytes.fromhex(event.sig), bytes.fromhex(event.id)
    assert crypto.schnorr_verify(pub, sig, msg)
    assert not crypto.schnorr_verify(pub[:31], sig, msg)
    assert not crypto.schnorr_verify(pub, sig[:63], msg)
    assert not crypto.schnorr_verify(b"\xff" * 32, sig, msg)  # x >= field size: not a valid key
    assert not crypto.schnorr_verify(pub, sig, msg[:31])


def test_generated_keys_sign_events_that_validate() -> None:
    secret = crypto.generate_secret_key()
    event = sign_event(secret, kind=1, content="hi ☃", tags=[["t", "x"]], created_at=1_700_000_123)
    assert event.pubkey == coincurve.PrivateKey(secret).public_key_xonly.format().hex()
    assert validate_event(json.loads(event.to_json())) == event
    assert event.created_at == 1_700_000_123


def test_sign_event_rejects_bad_keys_and_fields() -> None:
    with pytest.raises(ValueError):
        sign_event(b"\x00" * 31, kind=1, content="")
    with pytest.raises(ValueError):
        sign_event(b"\x00" * 32, kind=1, content="")  # zero is not a valid scalar
    with pytest.raises(InvalidEvent):
        sign_event(secret_key("a"), kind=70_000, content="")


def test_valid_event_passes_full_validation() -> None:
    data = make_event(tags=[["e", "ab" * 32], ["p", pubkey_hex("bob")]], content="x\ny").to_dict()
    event = validate_event(data)
    assert event.to_dict() == data


def test_tampered_id_is_rejected() -> None:
    data = event_dict()
    data["id"] = ("0" if data["id"][0] != "0" else "1") + data["id"][1:]
    with pytest.raises(InvalidEvent, match=r"^invalid: event id does not match its content$"):
        validate_event(data)


def test_tampered_content_is_rejected() -> None:
    data = event_dict()
    data["content"] += "!"
    with pytest.raises(InvalidEvent, match="^invalid: event id does not match"):
        validate_event(data)


def test_tampered_tags_and_created_at_are_rejected() -> None:
    for change in ({"tags": [["t", "x"]]}, {"created_at": 1_700_000_001}, {"kind": 2}):
        with pytest.raises(InvalidEvent, match="^invalid: event id does not match"):
            validate_event(event_dict(**change))


def test_tampered_signature_is_rejected() -> None:
    data = event_dict()
    data["sig"] = data["sig"][:-1] + ("0" if data["sig"][-1] != "0" else "1")
    with pytest.raises(InvalidEvent, match=r"^invalid: signature verification failed$"):
        validate_event(data)


def test_signature_from_another_key_is_rejected() -> None:
    # Same content and a correct id for Bob's pubkey, but signed by Alice.
    alice = make_event("alice")
    bob_pub = pubkey_hex("bob")
    forged_id = compute_id(bob_pub, alice.created_at, alice.kind, alice.tags, alice.content)
    forged_sig = coincurve.PrivateKey(secret_key("alice")).sign_schnorr(bytes.fromhex(forged_id)).hex()
    data = alice.to_dict() | {"pubkey": bob_pub, "id": forged_id, "sig": forged_sig}
    with pytest.raises(InvalidEvent, match="^invalid: signature verification failed$"):
        validate_event(data)


def test_pubkey_not_on_curve_is_a_verification_failure_not_a_crash() -> None:
    data = event_dict()
    bad_pub = "ff" * 32
    data["pubkey"] = bad_pub
    data["id"] = compute_id(bad_pub, data["created_at"], data["kind"], data["tags"], data["content"])
    with pytest.raises(InvalidEvent, match="^invalid: signature verification failed$"):
        validate_event(data)


def test_verify_signature_alone_does_not_check_the_id() -> None:
    event = make_event()
    swapped = dataclasses.replace(event, content="different")
    assert verify_signature(swapped)  # the signature still covers event.id ...
    with pytest.raises(InvalidEvent, match="does not match"):
        verify_event(swapped)  # ... which no longer matches the content


def test_clock_window_is_optional_and_checked() -> None:
    data = make_event(created_at=1_000_000).to_dict()
    assert validate_event(data).created_at == 1_000_000
    with pytest.raises(InvalidEvent, match="^invalid: event creation date is too far off"):
        validate_event(data, now=2_000_000, max_past_seconds=10)
    with pytest.raises(InvalidEvent, match="too far off"):
        validate_event(data, now=999_000, max_future_seconds=999)
    assert validate_event(data, now=999_000, max_future_seconds=1000, max_past_seconds=0).id == data["id"]


# --- strict structure --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"id": "AB" * 32}, "id must be 64 lowercase hex"),
        ({"id": "ab" * 31}, "id must be 64 lowercase hex"),
        ({"id": 5}, "id must be 64 lowercase hex"),
        ({"pubkey": "g" * 64}, "pubkey must be 64 lowercase hex"),
        ({"pubkey": None}, "pubkey must be 64 lowercase hex"),
        ({"sig": "ab" * 32}, "sig must be 128 lowercase hex"),
        ({"sig": "AB" * 64}, "sig must be 128 lowercase hex"),
        ({"created_at": "1700000000"}, "created_at must be an integer"),
        ({"created_at": 1.5}, "created_at must be an integer"),
        ({"created_at": True}, "created_at must be an integer"),
        ({"created_at": -1}, "created_at must be between"),
        ({"created_at": MAX_CREATED_AT + 1}, "created_at must be between"),
        ({"created_at": float("inf")}, "created_at must be an integer"),
        ({"kind": 65_536}, "kind must be between"),
        ({"kind": -1}, "kind must be between"),
        ({"kind": None}, "kind must be an integer"),
        ({"kind": False}, "kind must be an integer"),
        ({"tags": {}}, "tags must be an array of arrays of strings"),
        ({"tags": ["e"]}, "tags must be an array of arrays of strings"),
        ({"tags": [["e", 1]]}, "tags must be an array of arrays of strings"),
        ({"tags": [["e", None]]}, "tags must be an array of arrays of strings"),
        ({"tags": [[]]}, "each tag must have at least one element"),
        ({"content": None}, "content must be a string"),
        ({"content": ["x"]}, "content must be a string"),
        ({"content": "bad \ud800 surrogate"}, "unpaired UTF-16 surrogate"),
        ({"tags": [["t", "\udfff"]]}, "unpaired UTF-16 surrogate"),
    ],
)
def test_structural_errors_have_invalid_prefix(change: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        Event.from_json(event_dict(**change))
    assert str(info.value).startswith("invalid: ")
    assert message in str(info.value)


@pytest.mark.parametrize("field", ["id", "pubkey", "created_at", "kind", "tags", "content", "sig"])
def test_missing_field_is_rejected(field: str) -> None:
    data = event_dict()
    del data[field]
    with pytest.raises(InvalidEvent, match=f"^invalid: event is missing '{field}'$"):
        Event.from_json(data)


@pytest.mark.parametrize("obj", [None, [], "event", 5, [("id", "x")]])
def test_non_object_is_rejected(obj: object) -> None:
    with pytest.raises(InvalidEvent, match="^invalid: event must be a JSON object$"):
        Event.from_json(obj)


def test_integral_floats_are_read_as_integers_like_javascript() -> None:
    event = make_event(created_at=1_700_000_000, kind=7)
    data = event.to_dict() | {"created_at": 1.7e9, "kind": 7.0}
    parsed = validate_event(data)
    assert parsed == event
    assert type(parsed.created_at) is int
    assert type(parsed.kind) is int


def test_extra_keys_are_ignored() -> None:
    event = make_event()
    assert validate_event(event.to_dict() | {"seenOn": ["wss://x"], "relays": None}) == event


def test_direct_construction_is_validated_too() -> None:
    with pytest.raises(InvalidEvent, match="tags must be"):
        Event(id="0" * 64, pubkey="0" * 64, created_at=0, kind=1, tags=[["t"]], content="", sig="0" * 128)  # type: ignore[arg-type]


def test_events_are_immutable_and_hashable() -> None:
    event = make_event()
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.content = "x"  # type: ignore[misc]
    assert {event, make_event()} == {event}
    assert event.to_dict()["tags"] == []


@given(
    content=unicode_text,
    tags=st.lists(st.lists(unicode_text, min_size=1, max_size=3), max_size=3),
    created_at=st.integers(0, MAX_CREATED_AT),
    kind=st.integers(0, 65_535),
)
def test_to_json_round_trips_through_validation(
    content: str, tags: list[list[str]], created_at: int, kind: int
) -> None:
    event = make_event(content=content, tags=tags, created_at=created_at, kind=kind)
    assert validate_event(json.loads(event.to_json())) == event


# --- kinds -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        (0, KindClass.REPLACEABLE),
        (1, KindClass.REGULAR),
        (2, KindClass.REGULAR),
        (3, KindClass.REPLACEABLE),
        (4, KindClass.REGULAR),
        (5, KindClass.REGULAR),
        (9_999, KindClass.REGULAR),
        (10_000, KindClass.REPLACEABLE),
        (19_999, KindClass.REPLACEABLE),
        (20_000, KindClass.EPHEMERAL),
        (29_999, KindClass.EPHEMERAL),
        (30_000, KindClass.ADDRESSABLE),
        (39_999, KindClass.ADDRESSABLE),
        (40_000, KindClass.REGULAR),
        (65_535, KindClass.REGULAR),
    ],
)
def test_kind_classes_follow_nip01_ranges(kind: int, expected: KindClass) -> None:
    assert kind_class(kind) is expected
    flags = (is_regular_kind(kind), is_replaceable_kind(kind), is_ephemeral_kind(kind), is_addressable_kind(kind))
    assert flags.count(True) == 1
    assert make_event(kind=kind).kind_class is expected


def test_replaceable_address_has_empty_d() -> None:
    event = make_event(kind=10_002, tags=[["d", "ignored"]])
    assert event.replacement_key() == (10_002, event.pubkey, "")
    assert event.address() == f"10002:{event.pubkey}:"


def test_addressable_address_uses_first_d_tag_value() -> None:
    event = make_event(kind=30_023, tags=[["t", "x"], ["d", "post:1"], ["d", "second"]])
    assert event.d_tag == "post:1"
    assert event.replacement_key() == (30_023, event.pubkey, "post:1")
    assert event.address() == f"30023:{event.pubkey}:post:1"


def test_addressable_without_d_value_uses_empty_string() -> None:
    assert make_event(kind=30_000).d_tag == ""
    assert make_event(kind=30_000, tags=[["d"]]).d_tag == ""
    assert make_event(kind=30_000, tags=[["d"]]).address() == f"30000:{pubkey_hex('alice')}:"


def test_regular_and_ephemeral_events_have_no_address() -> None:
    assert make_event(kind=1).address() is None
    assert make_event(kind=20_001).replacement_key() is None


def test_supersedes_prefers_newer_then_lowest_id() -> None:
    old = make_event(kind=0, created_at=10, content="old")
    new = make_event(kind=0, created_at=11, content="new")
    assert supersedes(new, old)
    assert not supersedes(old, new)
    a, b = make_event(kind=0, created_at=10, content="a"), make_event(kind=0, created_at=10, content="b")
    low, high = sorted([a, b], key=lambda e: e.id)
    assert supersedes(low, high)
    assert not supersedes(high, low)
    assert not supersedes(low, low)


def test_tag_values_reads_second_elements_of_named_tags() -> None:
    event = make_event(tags=[["e", "1"], ["p", "2"], ["e"], ["e", "3", "relay"]])
    assert list(event.tag_values("e")) == ["1", "3"]
