"""How Faust's consumer hands a message to the streams, with ``patches._Consumer.wait_first``.

Faust delivers every message as ``wait_first(callback(message), suspend_flow.wait())``.
The override runs the callback inline when nothing blocks it and otherwise
behaves as mode's ``wait_first``: these tests drive the real consumer class
(no broker is contacted) through each case the drain loop meets.
"""

from __future__ import annotations

import asyncio
import functools

import faust
import pytest
from yarl import URL

from bucketstream import patches


def in_a_loop(test):
    """The coroutine ``test`` run as a plain test, on a fresh event loop."""
    @functools.wraps(test)
    def run(*args, **kwargs):
        return asyncio.run(test(*args, **kwargs))
    return run


async def _noop(*args) -> None:
    pass


def consumer():
    app = faust.App("test-delivery", broker="kafka://127.0.0.1:1")
    transport = patches.Transport(URL("kafka://127.0.0.1:1"), app)
    c = transport.create_consumer(callback=_noop, on_partitions_revoked=_noop, on_partitions_assigned=_noop)
    assert isinstance(c, patches._Consumer)
    return c


@in_a_loop
async def test_a_delivery_nothing_blocks_runs_in_the_drain_loops_own_task():
    c = consumer()
    caller = asyncio.current_task()
    ran_in = []

    async def deliver(message):
        ran_in.append(asyncio.current_task())
        return message * 2

    suspend = c.suspend_flow.wait()
    result = await c.wait_first(deliver(21), suspend)
    assert ran_in == [caller]  # no task of its own
    assert (result.results, result.stopped) == ([42], False)
    assert suspend.cr_frame is None  # the unused wait is closed, not left to warn "never awaited"


@in_a_loop
async def test_a_delivery_that_blocks_finishes_with_its_result():
    c = consumer()
    loop = asyncio.get_running_loop()
    room = loop.create_future()
    steps = []

    async def deliver(message):
        steps.append("before")
        got = await room  # a full stream buffer, until the agent takes an event
        steps.append("after")
        return message + got

    loop.call_later(0.01, room.set_result, 1)
    result = await c.wait_first(deliver(41), c.suspend_flow.wait())
    assert steps == ["before", "after"]
    assert (result.results, result.stopped) == ([42], False)


@pytest.mark.parametrize("waits", ["on a future", "yielding"])
@in_a_loop
async def test_a_blocked_delivery_is_abandoned_when_flow_is_suspended(waits):
    """A rebalance must not wait for a delivery stuck on a buffer: mode cancels it."""
    c = consumer()
    loop = asyncio.get_running_loop()
    seen = []

    async def deliver(message):
        try:
            if waits == "on a future":
                await loop.create_future()  # never done
            else:
                for _ in range(100_000):  # a bare yield each time: cancelled by a throw, not by its future
                    await asyncio.sleep(0)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    loop.call_later(0.01, c.suspend_flow.set)
    result = await c.wait_first(deliver(1), c.suspend_flow.wait())
    await asyncio.sleep(0)  # the cancellation reaches the delivery's task
    assert seen == ["cancelled"]
    assert result.stopped is False and result.results == [True]  # the suspend event won


@pytest.mark.parametrize("blocks", [False, True], ids=["inline", "after blocking"])
@in_a_loop
async def test_an_error_in_a_delivery_reaches_the_drain_loop(blocks):
    c = consumer()

    async def deliver(message):
        if blocks:
            await asyncio.sleep(0)
        raise ValueError(message)

    suspend = c.suspend_flow.wait()
    with pytest.raises(ValueError, match="bad"):
        await c.wait_first(deliver("bad"), suspend)
    await asyncio.sleep(0)
    assert suspend.cr_frame is None


@in_a_loop
async def test_with_flow_already_suspended_a_delivery_goes_through_mode():
    c = consumer()
    c.suspend_flow.set()
    caller = asyncio.current_task()
    ran_in = []

    async def deliver(message):
        ran_in.append(asyncio.current_task())

    await c.wait_first(deliver(1), c.suspend_flow.wait())
    assert ran_in and ran_in[0] is not caller


@in_a_loop
async def test_deliveries_inline_in_a_row_give_the_event_loop_a_turn_every_slice():
    """Inline deliveries never yield on their own: without a turn every INLINE_SLICE of them,
    a fetched batch would be one stretch that every request waits behind."""
    c = consumer()
    turns = []

    async def other() -> None:  # a request, a timer: anything else on the loop
        while True:
            turns.append(delivered)
            await asyncio.sleep(0)

    delivered = 0
    task = asyncio.get_running_loop().create_task(other())
    await asyncio.sleep(0)
    turns.clear()
    for delivered in range(1, 3 * patches.INLINE_SLICE + 1):
        await c.wait_first(_noop(delivered), c.suspend_flow.wait())
    task.cancel()
    assert turns == [patches.INLINE_SLICE, 2 * patches.INLINE_SLICE, 3 * patches.INLINE_SLICE]
