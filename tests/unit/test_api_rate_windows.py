"""The API's in-process rate-limit counters (security.MemoryWindows) decide as the
``limits`` library's sliding-window counter on its memory storage, which they replace for
``memory://``: the same hits allowed and refused, the same Retry-After, over a run of
hits spread across many windows (a clock of our own drives both). And the threads that
run the services' calls (live.Threads) run every call, also across a shutdown."""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time

import pytest
from limits import parse
from limits.aio import strategies
from limits.aio.storage import MemoryStorage

from setia.entrypoints.api.live import MAX_THREADS, THREADS, Threads, thread_count
from setia.entrypoints.api.security import MemoryWindows


@pytest.mark.parametrize("limit_text", ["5/second", "7/minute", "1/second", "30/minute"])
def test_memory_windows_decide_as_limits_sliding_window_counter(
        limit_text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    limit = parse(limit_text)
    length = limit.get_expiry()
    clock = [1_800_000_000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    rng = random.Random(limit_text)

    async def run() -> tuple[list[object], list[object]]:
        storage = MemoryStorage()
        theirs_limiter = strategies.SlidingWindowCounterRateLimiter(storage)
        mine = MemoryWindows()
        ours: list[object] = []
        theirs: list[object] = []
        for _ in range(600):
            clock[0] += rng.choice([0.0, 0.2, 0.5, 1.5, 4.0]) * length / limit.amount * rng.random()
            who = rng.choice(["a", "b"])
            wait = mine.hit("key", who, limit.amount, length, clock[0])
            ours.append(None if wait is None else max(1, math.ceil(wait)))
            if await theirs_limiter.hit(limit, "key", who):
                theirs.append(None)
            else:
                stats = await theirs_limiter.get_window_stats(limit, "key", who)
                theirs.append(max(1, math.ceil(stats.reset_time - clock[0])))
        return ours, theirs

    ours, theirs = asyncio.run(run())
    assert ours == theirs
    assert any(found is None for found in ours) and any(found for found in ours)


def test_memory_windows_forget_counters_of_ended_windows() -> None:
    windows = MemoryWindows()
    start = 1_800_000_000.0
    assert windows.hit("ip", "10.0.0.1", 2, 1, start) is None
    assert windows.hit("ip", "10.0.0.2", 2, 1, start) is None
    windows._next_sweep = start  # sweep on the next hit
    assert windows.hit("ip", "10.0.0.3", 2, 1, start + 5) is None
    assert [who for _, who, _, _ in windows.windows] == ["10.0.0.3"]


def test_threads_run_every_call_and_start_again_after_a_shutdown() -> None:
    threads = Threads(3, "test")
    done: list[int] = []
    lock = threading.Lock()
    finished = threading.Event()

    def call(number: int, total: int) -> None:
        time.sleep(0.001)
        with lock:
            done.append(number)
            if len(done) == total:
                finished.set()

    for number in range(50):
        threads.submit(lambda number=number: call(number, 50))
    assert finished.wait(10) and sorted(done) == list(range(50))
    assert threads._started <= 3
    threads.shutdown()
    done.clear()
    finished.clear()
    for number in range(10):
        threads.submit(lambda number=number: call(number, 10))
    assert finished.wait(10) and sorted(done) == list(range(10))
    threads.shutdown()


def test_thread_count_is_eight_unless_setia_api_threads_says_otherwise() -> None:
    assert THREADS == 8 and MAX_THREADS == 256
    assert thread_count({}) == 8
    assert thread_count({"SETIA_API_THREADS": " "}) == 8
    assert thread_count({"SETIA_API_THREADS": "3"}) == 3
    assert thread_count({"SETIA_API_THREADS": "256"}) == 256
    for bad in ("0", "257", "-1", "2.5", "eight"):
        with pytest.raises(ValueError) as refused:
            thread_count({"SETIA_API_THREADS": bad})
        assert str(refused.value) == (
            f"SETIA_API_THREADS must be a whole number from 1 to 256, not {bad!r}")
