"""``relays.consumers.dispatch_each``: the consumer's loop over the socket and the channel layer. Every message
dispatched, one dispatch at a time, each source's in order and asked again only once its last message was
dispatched; a dispatch or source that raises (StopConsumer included) ends the loop with the others stopped."""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest
from channels.exceptions import StopConsumer

from relays.consumers import dispatch_each


class Source:
    """A receive callable over a queue that counts its calls and notes a receive cancelled while waiting."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.calls = 0
        self.cancelled = False

    async def __call__(self) -> object:
        self.calls += 1
        try:
            item = await self.queue.get()
        except asyncio.CancelledError:
            await asyncio.sleep(0)  # a receive that cleans up (channels_redis releases its lock)
            self.cancelled = True
            raise
        if isinstance(item, BaseException):
            raise item
        return item


async def test_every_message_is_dispatched_once_in_order_one_dispatch_at_a_time():
    socket, layer = Source("socket"), Source("layer")
    got: list[tuple[str, int]] = []
    running = 0
    rng = random.Random(5)

    async def dispatch(message: tuple[str, int]) -> None:
        nonlocal running
        running += 1
        assert running == 1, "two dispatches at once"
        for _ in range(rng.randrange(3)):
            await asyncio.sleep(0)  # a dispatch that awaits (a send, a database call)
        got.append(message)
        running -= 1
        if len(got) == 400:
            raise StopConsumer

    async def produce() -> None:
        for i in range(200):
            socket.queue.put_nowait(("socket", i))
            layer.queue.put_nowait(("layer", i))
            if rng.random() < 0.5:
                await asyncio.sleep(0)

    producer = asyncio.create_task(produce())
    with pytest.raises(StopConsumer):
        await asyncio.wait_for(dispatch_each([socket, layer], dispatch), 10)
    await producer
    for name in ("socket", "layer"):
        assert [i for source, i in got if source == name] == list(range(200))


async def test_a_source_is_asked_again_only_once_its_message_was_dispatched():
    socket, layer = Source("socket"), Source("layer")
    release = asyncio.Event()
    dispatched: list[object] = []

    async def dispatch(message: object) -> None:
        await release.wait()
        dispatched.append(message)

    loop = asyncio.create_task(dispatch_each([socket, layer], dispatch))
    socket.queue.put_nowait("first")
    socket.queue.put_nowait("second")
    for _ in range(20):
        await asyncio.sleep(0)
    assert (socket.calls, dispatched) == (1, [])  # "first" is being dispatched: "second" is not taken yet
    release.set()
    for _ in range(20):
        await asyncio.sleep(0)
    assert dispatched == ["first", "second"] and socket.calls == 3
    loop.cancel()
    with pytest.raises(asyncio.CancelledError):
        await loop


async def test_a_burst_is_not_dispatched_in_one_go_ahead_of_other_tasks():
    """A client's frames that arrived in one read are all in the socket's queue at once; between two of them
    the loop turns, so what the first started (the session's frame handling, other sockets) runs too."""
    socket = Source("socket")
    turns = 0
    seen_at: list[int] = []

    async def ticker() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    async def dispatch(message: object) -> None:
        seen_at.append(turns)
        if len(seen_at) == 50:
            raise StopConsumer

    for i in range(50):
        socket.queue.put_nowait(i)
    tick = asyncio.create_task(ticker())
    with pytest.raises(StopConsumer):
        async with asyncio.timeout(5):
            await dispatch_each([socket], dispatch)
    tick.cancel()
    assert all(later > earlier for earlier, later in itertools.pairwise(seen_at)), seen_at


@pytest.mark.parametrize("raised", [StopConsumer(), ValueError("No handler for message type x")])
async def test_a_dispatch_that_raises_ends_the_loop_and_stops_the_other_source(raised):
    socket, layer = Source("socket"), Source("layer")

    async def dispatch(message: object) -> None:
        raise raised

    socket.queue.put_nowait("disconnect")
    with pytest.raises(type(raised)):
        async with asyncio.timeout(5):
            await dispatch_each([socket, layer], dispatch)
    assert layer.cancelled  # the channel layer's pending receive is over before the consumer goes on


async def test_a_source_that_fails_ends_the_loop_with_its_error():
    socket, layer = Source("socket"), Source("layer")
    dispatched: list[object] = []

    async def dispatch(message: object) -> None:
        dispatched.append(message)

    socket.queue.put_nowait("frame")
    layer.queue.put_nowait(ConnectionError("the channel layer went away"))
    with pytest.raises(ConnectionError, match="went away"):
        async with asyncio.timeout(5):
            await dispatch_each([socket, layer], dispatch)
    assert socket.cancelled
    assert dispatched in ([], ["frame"])


async def test_cancelling_the_loop_cancels_every_receive_and_leaves_no_task():
    socket, layer = Source("socket"), Source("layer")

    async def dispatch(message: object) -> None:
        return None

    before = asyncio.all_tasks()
    loop = asyncio.create_task(dispatch_each([socket, layer], dispatch))
    await asyncio.sleep(0.01)
    loop.cancel()
    with pytest.raises(asyncio.CancelledError):
        await loop
    assert socket.cancelled and layer.cancelled
    assert asyncio.all_tasks() == before
