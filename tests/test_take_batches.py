"""The merge agent's batches (``patches.take_batches``) on a real Faust stream: Faust's batches, no idle timer.

Faust's own ``take_events`` wakes every ``within`` seconds whether or not an
event came; ``take_batches`` waits for the first event, then up to ``within``
for more. These tests drive a Faust stream over an in-memory channel (no broker).
"""

from __future__ import annotations

import asyncio
import functools

import faust

from bucketstream import patches


def in_a_loop(test):
    """The coroutine ``test`` run as a plain test, on a fresh event loop."""
    @functools.wraps(test)
    def run(*args, **kwargs):
        return asyncio.run(test(*args, **kwargs))
    return run


def channel_and_stream():
    app = faust.App("test-take-batches", broker="kafka://127.0.0.1:1")
    app.flow_control.resume()  # Faust's queues wait for this until the app runs
    channel = app.channel(value_type=bytes)
    return channel, channel.stream()


class Taker:
    """Consumes ``take_batches`` in a task; each batch's values land in ``batches``."""

    def __init__(self, stream, max_: int, within: float, on_batch=None) -> None:
        self.batches: list[list[bytes]] = []
        self.arrived = asyncio.Event()
        self.agen = patches.take_batches(stream, max_, within)
        self.on_batch = on_batch
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        async for events in self.agen:
            self.batches.append([e.value for e in events])
            if self.on_batch:
                await self.on_batch(events)
            self.arrived.set()

    async def next_batch(self, timeout: float = 5.0) -> list[bytes]:
        await asyncio.wait_for(self.arrived.wait(), timeout)
        self.arrived.clear()
        return self.batches[-1]

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.agen.aclose()


@in_a_loop
async def test_a_full_buffer_makes_a_batch_of_max_events_in_order():
    channel, stream = channel_and_stream()
    taker = Taker(stream, 5, within=30.0)  # only fullness can end a batch within the test
    for i in range(10):
        await channel.send(value=b"%d" % i)
    assert await taker.next_batch() == [b"0", b"1", b"2", b"3", b"4"]
    assert await taker.next_batch() == [b"5", b"6", b"7", b"8", b"9"]
    await taker.stop()


@in_a_loop
async def test_a_batch_takes_what_arrives_within_the_wait_after_its_first_event():
    channel, stream = channel_and_stream()
    taker = Taker(stream, 1000, within=0.5)
    await channel.send(value=b"a")
    await asyncio.sleep(0.05)  # inside the half second the first event opened
    await channel.send(value=b"b")
    assert await taker.next_batch() == [b"a", b"b"]
    await channel.send(value=b"c")  # a lone event still goes, once its wait is over
    assert await taker.next_batch() == [b"c"]
    await taker.stop()


@in_a_loop
async def test_an_idle_stream_does_not_wake_the_batcher():
    channel, stream = channel_and_stream()
    waits = 0
    wait_for_stopped = stream.wait_for_stopped

    async def counted(*args, **kwargs):
        nonlocal waits
        waits += 1
        return await wait_for_stopped(*args, **kwargs)

    stream.wait_for_stopped = counted
    taker = Taker(stream, 1000, within=0.01)
    await asyncio.sleep(0.5)  # the idle time under test: Faust's take_events waits ~50 times in it
    assert waits <= 1
    await channel.send(value=b"x")
    assert await taker.next_batch() == [b"x"]
    assert waits <= 3  # the first event, then the fill wait, then waiting again
    await taker.stop()


@in_a_loop
async def test_events_are_acked_only_after_their_batch_was_handled():
    channel, stream = channel_and_stream()
    acked: list[bytes] = []
    ack = stream.ack

    async def recording_ack(event):
        acked.append(event.value)
        return await ack(event)

    stream.ack = recording_ack
    seen_while_handling: list[list[bytes]] = []

    async def handle(events):
        await asyncio.sleep(0)  # a handler that awaits, as the merge agent's changelog write does
        seen_while_handling.append(list(acked))

    taker = Taker(stream, 2, within=30.0, on_batch=handle)
    for v in (b"1", b"2", b"3", b"4"):
        await channel.send(value=v)
    await taker.next_batch()
    await taker.next_batch()
    assert seen_while_handling == [[], [b"1", b"2"]]
    await taker.stop()


@in_a_loop
async def test_events_that_come_while_a_batch_is_handled_go_to_the_next_batch():
    channel, stream = channel_and_stream()
    release, handling = asyncio.Event(), asyncio.Event()

    async def handle(events):
        handling.set()
        await release.wait()

    taker = Taker(stream, 1000, within=0.05, on_batch=handle)
    await channel.send(value=b"first")
    await asyncio.wait_for(handling.wait(), 5.0)
    for v in (b"late1", b"late2"):
        await channel.send(value=v)
    await asyncio.sleep(0.1)  # more than the wait: they must not join the batch being handled
    release.set()
    assert await taker.next_batch() == [b"first"]
    assert await taker.next_batch() == [b"late1", b"late2"]
    assert taker.batches == [[b"first"], [b"late1", b"late2"]]
    await taker.stop()


@in_a_loop
async def test_closing_restores_the_stream():
    channel, stream = channel_and_stream()
    acks, processors = stream.enable_acks, list(stream._processors)
    taker = Taker(stream, 10, within=0.01)
    await channel.send(value=b"x")
    await taker.next_batch()
    assert stream.enable_acks is False
    await taker.stop()
    assert stream.enable_acks == acks
    assert list(stream._processors) == processors
