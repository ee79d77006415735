"""The garbage collector paused while bulk transactions run (service/batch.py)."""

from __future__ import annotations

import gc
import threading

from setia.service.batch import collector_paused


def test_overlapping_pauses_keep_the_collector_off_until_the_last_ends():
    assert gc.isenabled()
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, bool] = {}

    def first() -> None:
        with collector_paused():
            first_in.set()
            second_in.wait(10)
        first_out.set()

    def second() -> None:
        first_in.wait(10)
        with collector_paused():
            second_in.set()
            first_out.wait(10)
            # the first pause ended while this one runs: still off
            seen["after the first ended"] = gc.isenabled()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert seen == {"after the first ended": False}
    assert gc.isenabled()


def test_a_collector_turned_off_before_stays_off():
    gc.disable()
    try:
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_the_collector_runs_again_after_an_error():
    try:
        with collector_paused():
            raise ValueError("refused")
    except ValueError:
        pass
    assert gc.isenabled()


def test_batches_that_keep_overlapping_still_let_the_collector_run(monkeypatch):
    import weakref

    from setia.service import batch

    monkeypatch.setattr(batch, "MAX_PAUSE_SECONDS", 0.0)

    class Node:
        pass

    with collector_paused():  # another batch, running throughout
        with collector_paused():
            cycle = Node()
            cycle.self = cycle  # type: ignore[attr-defined]
            alive = weakref.ref(cycle)
            del cycle
        # this batch ended while the other ran, the pause being overdue: collected
        assert alive() is None
        assert not gc.isenabled()
    assert gc.isenabled()


def test_a_short_overlap_does_not_run_the_collector(monkeypatch):
    import weakref

    from setia.service import batch

    monkeypatch.setattr(batch, "MAX_PAUSE_SECONDS", 3600.0)

    class Node:
        pass

    with collector_paused():
        with collector_paused():
            cycle = Node()
            cycle.self = cycle  # type: ignore[attr-defined]
            alive = weakref.ref(cycle)
            del cycle
        assert alive() is not None  # left for later
    gc.collect()
    assert alive() is None
