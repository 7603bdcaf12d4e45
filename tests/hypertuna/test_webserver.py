"""The web process's coalescing transport (``hypertuna/webserver.py``): the writes of one loop turn reach the
socket as one write, in order; close writes what was kept, abort drops it, and nothing is written once the
transport is closing. The server as a whole is exercised in ``test_ws_edges.py``."""

from __future__ import annotations

import asyncio

from hypertuna.webserver import WRITE_THROUGH_BYTES, CoalescingTransport


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closing = False
        self.closed = self.aborted = False

    def write(self, data: bytes) -> None:
        assert not self.closing, "written after close"
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = self.closed = True

    def abort(self) -> None:
        self.closing = self.aborted = True

    def get_write_buffer_size(self) -> int:
        return 7

    def get_extra_info(self, name: str) -> object:
        return {"peername": ("127.0.0.1", 5)}.get(name)


async def _turn() -> None:
    await asyncio.sleep(0)


async def test_the_writes_of_one_turn_are_one_write_in_order():
    inner = RecordingTransport()
    transport = CoalescingTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
    for i in range(100):
        transport.write(f"frame {i};".encode())
    transport.write(b"")
    assert inner.writes == []
    assert transport.get_write_buffer_size() == 7 + sum(len(f"frame {i};") for i in range(100))
    await _turn()
    assert inner.writes == ["".join(f"frame {i};" for i in range(100)).encode()]
    transport.write(b"next")
    await _turn()
    assert inner.writes[1:] == [b"next"]  # a lone write goes out on the next turn, not held longer


async def test_a_burst_is_written_through_once_enough_is_kept():
    # A long answer reaches the wrapped transport while it is being written, so its flow control (pausing the
    # protocol past the high-water mark) applies to the burst, not after it.
    inner = RecordingTransport()
    transport = CoalescingTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
    piece = b"x" * (WRITE_THROUGH_BYTES // 4)
    for _ in range(3):
        transport.write(piece)
    assert inner.writes == [] and transport.get_write_buffer_size() == 7 + 3 * len(piece)
    transport.write(piece)  # the fourth reaches the threshold: all four go at once, in this turn
    assert inner.writes == [piece * 4] and transport.get_write_buffer_size() == 7
    transport.write(b"tail")
    await _turn()
    assert inner.writes == [piece * 4, b"tail"]


async def test_close_writes_what_was_kept_then_closes():
    inner = RecordingTransport()
    transport = CoalescingTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"last frame")
    transport.write(b"close frame")
    transport.close()
    assert inner.writes == [b"last frame" + b"close frame"] and inner.closed
    await _turn()  # the scheduled flush finds nothing left
    assert len(inner.writes) == 1


async def test_abort_drops_what_was_kept_and_a_closing_transport_gets_nothing():
    inner = RecordingTransport()
    transport = CoalescingTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"dropped")
    transport.abort()
    await _turn()
    assert inner.writes == [] and inner.aborted

    inner = RecordingTransport()
    transport = CoalescingTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"too late")
    inner.closing = True  # the connection went away before the turn ended
    await _turn()
    assert inner.writes == []


async def test_the_rest_is_the_wrapped_transports():
    inner = RecordingTransport()
    transport = CoalescingTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
    assert transport.get_extra_info("peername") == ("127.0.0.1", 5)
    assert transport.is_closing() is False
