"""How a client coalesces admissions per shard (`Coalescer`), on a real event loop, no Ray.

`send` here is the queue's own seam (the client passes a Ray actor call): it records every
batch and answers it when the test lets it, so each test states exactly what was in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from serve_app.deployments.limiter import Coalescer, LimiterUnavailable


class Sender:
    """Records batches; holds each one until `release()` (or at once when not holding)."""

    def __init__(self, hold: bool = False, fail: frozenset[str] = frozenset()):
        self.batches: list[list[str]] = []
        self.waited_s: list[float] = []
        self._hold = hold
        self._fail = fail
        self._released = asyncio.Event()

    async def __call__(self, items: list[str], waited_s: float) -> list[str]:
        self.batches.append(list(items))
        self.waited_s.append(waited_s)
        if self._hold:
            await self._released.wait()
            self._released.clear()
        if self._fail & set(items):
            raise LimiterUnavailable("shard down")
        return [f"{item}!" for item in items]

    def release(self) -> None:
        self._released.set()


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("never happened")


async def test_a_lone_admission_goes_out_at_once_whatever_the_window() -> None:
    send = Sender()
    queue = Coalescer(send, window_s=1000.0)
    # A queue that lingered for its window before a first send would not answer for 1000 s.
    assert await asyncio.wait_for(queue.submit("a"), timeout=30) == "a!"
    assert send.batches == [["a"]]


async def test_admissions_behind_a_call_in_flight_go_out_together_in_order() -> None:
    send = Sender(hold=True)
    queue = Coalescer(send, window_s=0.0)
    first = asyncio.create_task(queue.submit("0"))
    await until(lambda: len(send.batches) == 1)
    rest = [asyncio.create_task(queue.submit(str(i))) for i in range(1, 6)]
    await asyncio.sleep(0.05)  # time enough for a queue that does not wait to send them
    assert send.batches == [["0"]]  # never two calls in flight
    send.release()
    await until(lambda: len(send.batches) == 2)
    send.release()
    assert list(await asyncio.gather(first, *rest)) == ["0!", "1!", "2!", "3!", "4!", "5!"]
    assert send.batches == [["0"], ["1", "2", "3", "4", "5"]]
    assert send.waited_s[1] >= 0.05  # the oldest of the second batch waited for the first


async def test_admissions_within_the_window_of_the_last_call_wait_and_go_out_together() -> None:
    send = Sender()
    queue = Coalescer(send, window_s=1.0)
    assert await queue.submit("a") == "a!"  # the first goes out at once and opens a window
    b = asyncio.create_task(queue.submit("b"))
    await asyncio.sleep(0.05)  # b would have gone out alone by now without the window
    c = asyncio.create_task(queue.submit("c"))
    assert list(await asyncio.gather(b, c)) == ["b!", "c!"]
    assert send.batches == [["a"], ["b", "c"]]


async def test_a_failed_call_fails_its_batch_only_and_the_queue_goes_on() -> None:
    send = Sender(hold=True, fail=frozenset({"x"}))
    queue = Coalescer(send, window_s=0.0)
    x = asyncio.create_task(queue.submit("x"))
    await until(lambda: len(send.batches) == 1)
    y, z = asyncio.create_task(queue.submit("y")), asyncio.create_task(queue.submit("z"))
    await asyncio.sleep(0)
    send.release()
    with pytest.raises(LimiterUnavailable):
        await x
    await until(lambda: len(send.batches) == 2)
    send.release()
    assert list(await asyncio.gather(y, z)) == ["y!", "z!"]
    assert send.batches == [["x"], ["y", "z"]]


async def test_an_admission_that_gave_up_while_queued_is_not_sent() -> None:
    send = Sender(hold=True)
    queue = Coalescer(send, window_s=0.0)
    first = asyncio.create_task(queue.submit("first"))
    await until(lambda: len(send.batches) == 1)
    with pytest.raises(asyncio.TimeoutError):  # as RateLimitClient's timeout_s does
        await asyncio.wait_for(queue.submit("impatient"), timeout=0.01)
    kept = asyncio.create_task(queue.submit("kept"))
    await asyncio.sleep(0)
    send.release()
    await until(lambda: len(send.batches) == 2)
    send.release()
    assert list(await asyncio.gather(first, kept)) == ["first!", "kept!"]
    assert send.batches == [["first"], ["kept"]]  # the one that gave up took no tokens
