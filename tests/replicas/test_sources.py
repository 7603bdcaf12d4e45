"""The bridge source adapter: the ``replica.readView`` contract is enforced before anything is stored."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync

from replicas.sources import BridgeReplicaSource, SourceError, parse_batch


class RecordingClient:
    def __init__(self, result):
        self.result = result
        self.calls = []

    async def call(self, method, params, *, timeout_s=None):
        self.calls.append((method, params))
        return self.result


def test_bridge_source_calls_read_view_and_parses_the_batch():
    client = RecordingClient(
        {
            "viewCoreKey": "AB" * 32,
            "length": 10,
            "nextSeq": 6,
            "entries": [
                {"seq": 3, "type": "put", "key": "cd" * 32, "value": "{}"},
                {"seq": 5, "type": "del", "key": "ef" * 32},
            ],
        }
    )
    batch = async_to_sync(BridgeReplicaSource(client).read_view)("r" * 64, "", 2, 4)
    assert client.calls == [
        ("replica.readView", {"relayKey": "r" * 64, "viewCoreKey": None, "startSeq": 2, "limit": 4})
    ]
    assert batch.length == 10 and batch.next_seq == 6 and batch.view_core_key == "ab" * 32
    assert [(e.seq, e.type) for e in batch.entries] == [(3, "put"), (5, "del")]


@pytest.mark.parametrize(
    "result",
    [
        [],
        {"length": -1, "nextSeq": 2, "entries": []},
        {"length": 10, "nextSeq": 1, "entries": []},  # moves backwards
        {"length": 10, "nextSeq": 12, "entries": []},  # past the end
        {"length": 10, "nextSeq": 6, "entries": [{"seq": 6, "key": "aa", "value": "{}"}]},  # outside the range
        {"length": 10, "nextSeq": 6, "entries": [{"seq": 4, "key": "aa"}, {"seq": 3, "key": "aa"}]},  # unordered
        {"length": 10, "nextSeq": 6, "entries": [{"seq": 3, "key": "XYZ"}]},
        {"length": 10, "nextSeq": 6, "entries": [{"seq": 3, "key": "aa", "type": "rename"}]},
        {"length": 10, "nextSeq": 6, "entries": [{"seq": 3, "key": "aa", "value": {"not": "text"}}]},
        {"length": True, "nextSeq": 6, "entries": []},
    ],
)
def test_out_of_contract_batches_are_refused(result):
    with pytest.raises(SourceError):
        parse_batch(result, start_seq=2)


def test_a_read_past_a_truncated_view_is_accepted_as_empty():
    batch = parse_batch({"length": 3, "nextSeq": 8, "entries": []}, start_seq=8)
    assert batch.entries == [] and batch.length == 3
