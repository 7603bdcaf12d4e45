"""Frames: client frame parsing (typed messages or FrameError, never anything else) and relay frames."""

from __future__ import annotations

import json
import pickle
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hypertuna.nostr import (
    AuthMessage,
    CloseMessage,
    CountMessage,
    EventMessage,
    Filter,
    FilterLimits,
    FrameError,
    FrameLimits,
    Prefix,
    ReqMessage,
    UnknownMessageType,
    auth_challenge_frame,
    closed_frame,
    count_frame,
    eose_frame,
    event_frame,
    event_frame_from_json,
    notice_frame,
    ok_frame,
    parse_client_message,
)
from tests.nostr.factories import event_dict, make_event


def frame(*parts: Any) -> str:
    return json.dumps(list(parts), ensure_ascii=False)


def refusal(raw: str | bytes, limits: FrameLimits = FrameLimits()) -> FrameError:
    with pytest.raises(FrameError) as info:
        parse_client_message(raw, limits)
    return info.value


# --- accepted frames ---------------------------------------------------------------------------------


def test_event_frame_parses_to_structurally_valid_event() -> None:
    event = make_event(content="héllo 😀", tags=[["t", "x"]])
    message = parse_client_message(frame("EVENT", event.to_dict()))
    assert message == EventMessage(event)


def test_event_frame_accepts_bytes() -> None:
    event = make_event()
    assert parse_client_message(frame("EVENT", event.to_dict()).encode()) == EventMessage(event)


def test_req_frame_parses_every_filter() -> None:
    message = parse_client_message(frame("REQ", "sub-1", {"kinds": [1], "limit": 10}, {"#t": ["x"]}))
    assert message == ReqMessage(
        "sub-1", (Filter(kinds=frozenset({1}), limit=10), Filter(tags=(("t", frozenset({"x"})),)))
    )


def test_close_auth_and_count_frames() -> None:
    assert parse_client_message(frame("CLOSE", "sub-1")) == CloseMessage("sub-1")
    auth = make_event(kind=22_242, tags=[["relay", "wss://gw"], ["challenge", "abc"]])
    assert parse_client_message(frame("AUTH", auth.to_dict())) == AuthMessage(auth)
    assert parse_client_message(frame("COUNT", "c", {"kinds": [7]})) == CountMessage(
        "c", (Filter(kinds=frozenset({7})),)
    )


def test_subscription_id_may_be_64_characters_of_anything() -> None:
    sub_id = "ü" * 63 + "😀"
    assert parse_client_message(frame("CLOSE", sub_id)) == CloseMessage(sub_id)


def test_event_frame_does_not_verify_signature() -> None:
    # Parsing is structural; verification is the caller's explicit step (verify_event).
    data = event_dict(content="tampered")
    message = parse_client_message(frame("EVENT", data))
    assert isinstance(message, EventMessage)
    assert message.event.computed_id() != message.event.id


# --- refused frames ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "notice"),
    [
        ("", "invalid: message is not valid JSON"),
        ("[", "invalid: message is not valid JSON"),
        ("not json", "invalid: message is not valid JSON"),
        ('["REQ", "s", {}] trailing', "invalid: message is not valid JSON"),
        ('["REQ","s",{"since":NaN}]', "invalid: message is not valid JSON"),
        ('["REQ","s",{"since":Infinity}]', "invalid: message is not valid JSON"),
        ("[" * 50_000 + "]" * 50_000, "invalid: message nests too deeply"),
        ("[" * 5_000 + "]" * 5_000, "invalid: message nests too deeply"),
        ('["REQ","s",{"since":' + "9" * 5000 + "}]", "invalid: message is not valid JSON"),
        ("{}", "invalid: message must be a non-empty JSON array"),
        ('"EVENT"', "invalid: message must be a non-empty JSON array"),
        ("null", "invalid: message must be a non-empty JSON array"),
        ("[]", "invalid: message must be a non-empty JSON array"),
        ("[1]", "invalid: message type must be a string"),
        ("[null, 1]", "invalid: message type must be a string"),
        ('["REQ"]', "invalid: REQ message has no subscription id"),
        ('["CLOSE"]', "invalid: CLOSE message has no subscription id"),
        ('["COUNT"]', "invalid: COUNT message has no subscription id"),
        ('["REQ", ""]', "invalid: subscription id must be a non-empty string of at most 64 characters"),
        ('["REQ", 5, {}]', "invalid: subscription id must be a non-empty string of at most 64 characters"),
        ('["REQ", null, {}]', "invalid: subscription id must be a non-empty string of at most 64 characters"),
        (frame("REQ", "x" * 65, {}), "invalid: subscription id must be a non-empty string of at most 64 characters"),
        ('["CLOSE", "\\ud800"]', "invalid: subscription id must be a non-empty string of at most 64 characters"),
        ('["CLOSE", "a", "b"]', 'invalid: CLOSE message must be ["CLOSE", <subscription_id>]'),
        ('["EVENT"]', 'invalid: EVENT message must be ["EVENT", <event>]'),
        ('["EVENT", "x"]', "invalid: event must be a JSON object"),
        ('["EVENT", {"id": "abc"}]', "invalid: event is missing 'pubkey'"),
        (frame("EVENT", event_dict(id="ABC")), "invalid: id must be 64 lowercase hex characters"),
        ('["AUTH", []]', "invalid: event must be a JSON object"),
    ],
)
def test_malformed_frames_are_answered_with_a_notice(raw: str, notice: str) -> None:
    error = refusal(raw)
    assert error.notice == notice
    assert error.reply() == json.dumps(["NOTICE", notice], ensure_ascii=False, separators=(",", ":"))


def test_unknown_type_is_a_distinct_error_carrying_the_type() -> None:
    error = refusal('["PING", 1]')
    assert isinstance(error, UnknownMessageType)
    assert error.message_type == "PING"
    assert error.prefix is Prefix.UNSUPPORTED
    assert error.reply() == '["NOTICE","unsupported: unknown message type \\"PING\\""]'


def test_unknown_type_notice_is_short_and_ascii() -> None:
    error = refusal(frame("X" * 500 + "\u2028😀"))
    assert isinstance(error, UnknownMessageType)
    assert len(error.notice) < 80
    assert error.notice.isascii() or error.notice.endswith("…")


def test_bad_filters_close_the_subscription() -> None:
    error = refusal(frame("REQ", "s1", {"kinds": ["1"]}))
    assert error.subscription_id == "s1"
    assert error.reply() == '["CLOSED","s1","invalid: kinds values must be an integer"]'


def test_req_and_count_need_at_least_one_filter() -> None:
    assert refusal('["REQ","s1"]').reply() == '["CLOSED","s1","invalid: REQ message must have at least one filter"]'
    assert refusal('["COUNT","c"]').reply() == '["CLOSED","c","invalid: COUNT message must have at least one filter"]'


def test_too_many_filters_close_the_subscription() -> None:
    limits = FrameLimits(max_filters=2)
    assert isinstance(parse_client_message(frame("REQ", "s", {}, {}), limits), ReqMessage)
    error = refusal(frame("REQ", "s", {}, {}, {}), limits)
    assert error.reply() == '["CLOSED","s","invalid: too many filters (max 2)"]'


def test_filter_limits_are_passed_through() -> None:
    limits = FrameLimits(filter_limits=FilterLimits(max_values=1, max_limit=3))
    message = parse_client_message(frame("REQ", "s", {"limit": 100}), limits)
    assert isinstance(message, ReqMessage)
    assert message.filters[0].limit == 3
    assert refusal(frame("REQ", "s", {"kinds": [1, 2]}), limits).subscription_id == "s"


def test_invalid_event_with_readable_id_is_answered_with_ok_false() -> None:
    data = event_dict(kind="1")
    error = refusal(frame("EVENT", data))
    assert error.event_id == data["id"]
    assert error.reply() == json.dumps(
        ["OK", data["id"], False, "invalid: kind must be an integer"], separators=(",", ":")
    )


def test_event_frame_with_extra_elements_is_refused_with_ok_false() -> None:
    data = event_dict()
    error = refusal(frame("EVENT", data, "extra"))
    assert json.loads(error.reply()) == ["OK", data["id"], False, 'invalid: EVENT message must be ["EVENT", <event>]']


def test_auth_with_invalid_event_is_answered_with_ok_false() -> None:
    data = event_dict(tags="nope")
    assert json.loads(refusal(frame("AUTH", data)).reply())[:3] == ["OK", data["id"], False]


def test_size_limit_counts_utf8_bytes() -> None:
    limits = FrameLimits(max_frame_bytes=100)
    fits = frame("CLOSE", "a" * 40)  # 55 bytes
    assert isinstance(parse_client_message(fits, limits), CloseMessage)
    too_big = frame("CLOSE", "😀" * 25)  # 38 characters, 113 bytes
    assert len(too_big) < 100 < len(too_big.encode())
    assert refusal(too_big, limits).notice == "invalid: message too large (max 100 bytes)"
    assert refusal(too_big.encode(), limits).notice == "invalid: message too large (max 100 bytes)"
    assert refusal("x" * 101, limits).notice == "invalid: message too large (max 100 bytes)"


def test_default_size_limit_rejects_oversized_frame() -> None:
    raw = frame("EVENT", event_dict(content="x" * 200_000))
    assert refusal(raw).notice == "invalid: message too large (max 131072 bytes)"


def test_invalid_utf8_bytes_are_refused() -> None:
    assert refusal(b'["CLOSE","\xff"]').notice == "invalid: message is not valid UTF-8"


# --- never anything but FrameError -------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20,
)
frame_types = st.sampled_from(["EVENT", "REQ", "CLOSE", "AUTH", "COUNT", "NOTICE", "", "req"])
filter_like = st.dictionaries(
    st.sampled_from(["ids", "authors", "kinds", "#e", "#p", "#t", "since", "until", "limit", "search"]),
    json_values,
    max_size=4,
)
event_like = st.fixed_dictionaries(
    {k: json_values for k in ("id", "pubkey", "created_at", "kind", "tags", "content", "sig")}
) | st.builds(lambda d, k, v: {**d, k: v}, st.builds(event_dict), st.sampled_from(list(event_dict())), json_values)


def _parse_or_frame_error(raw: str | bytes) -> None:
    try:
        message = parse_client_message(raw)
    except FrameError as error:
        reply = json.loads(error.reply())
        assert reply[0] in ("OK", "CLOSED", "NOTICE")
        assert isinstance(reply[-1], str) and ":" in reply[-1]
        error.reply().encode("utf-8")  # always sendable
    else:
        assert isinstance(message, (EventMessage, ReqMessage, CloseMessage, AuthMessage, CountMessage))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_arbitrary_text_never_raises_other_errors(raw: str) -> None:
    _parse_or_frame_error(raw)


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise_other_errors(raw: bytes) -> None:
    _parse_or_frame_error(raw)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        json_values,
        st.tuples(frame_types, json_values).map(list),
        st.tuples(frame_types, st.text(max_size=70), filter_like, filter_like).map(list),
        st.tuples(frame_types, event_like).map(list),
        st.lists(json_values, max_size=5),
    )
)
def test_arbitrary_json_never_raises_other_errors(value: Any) -> None:
    _parse_or_frame_error(json.dumps(value))


# --- relay frames ------------------------------------------------------------------------------------


def test_relay_frames_are_compact_raw_utf8_json() -> None:
    event = make_event(content="é 😀 \u2028 \x01")
    emitted = event_frame("sub é", event)
    assert emitted == '["EVENT","sub é",' + event.to_json() + "]"
    assert emitted == json.dumps(["EVENT", "sub é", event.to_dict()], ensure_ascii=False, separators=(",", ":"))
    assert "é 😀 \u2028 \\u0001" in emitted  # raw UTF-8, only the control character escaped
    assert json.loads(emitted) == ["EVENT", "sub é", event.to_dict()]
    assert event_frame("s", event.to_dict()) == event_frame("s", event)
    assert event_frame_from_json("s", event.to_json()) == event_frame("s", event)


def test_ok_eose_closed_notice_auth_count_frames() -> None:
    event_id = "ab" * 32
    assert ok_frame(event_id, True) == f'["OK","{event_id}",true,""]'
    assert (
        ok_frame(event_id, False, "duplicate: already have it")
        == f'["OK","{event_id}",false,"duplicate: already have it"]'
    )
    assert eose_frame("s") == '["EOSE","s"]'
    assert closed_frame("s", "error: shutting down") == '["CLOSED","s","error: shutting down"]'
    assert notice_frame('say "hi"\n') == '["NOTICE","say \\"hi\\"\\n"]'
    assert auth_challenge_frame("chal-1") == '["AUTH","chal-1"]'
    assert count_frame("c", 42) == '["COUNT","c",{"count":42}]'


def test_free_text_with_lone_surrogates_is_made_sendable() -> None:
    assert notice_frame("bad \ud800").encode("utf-8") == '["NOTICE","bad \ufffd"]'.encode()


def test_emitters_refuse_invalid_identifiers() -> None:
    with pytest.raises(ValueError):
        eose_frame("")
    with pytest.raises(ValueError):
        closed_frame("x" * 65, "error: x")
    with pytest.raises(ValueError):
        ok_frame("short", True)
    with pytest.raises(ValueError):
        count_frame("c", -1)


def test_errors_survive_pickling_with_their_answer() -> None:
    for error in (refusal('["REQ","s1"]'), refusal('["PING"]'), refusal(frame("EVENT", event_dict(kind="x")))):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert str(copy) == str(error)
        assert copy.reply() == error.reply()


def test_unsupported_frame_closes_a_count_and_names_other_verbs_briefly():
    from hypertuna.nostr import unsupported_frame

    assert json.loads(unsupported_frame('["COUNT","q",{}]', "here")) == [
        "CLOSED",
        "q",
        "unsupported: COUNT is not served here",
    ]
    notice = json.loads(unsupported_frame(json.dumps(["V" * 10_000]), "here"))
    assert notice[0] == "NOTICE" and notice[1].startswith('unsupported: "VVV') and len(notice[1]) < 200
    assert json.loads(unsupported_frame("not json", "here"))[0] == "NOTICE"
