"""Where a batch event's time goes: ``batch_bench.py`` in process with the steps of
``ingest_batch`` timed (docs/benchmarks-api.md, "Latest round").

    .venv/bin/python benchmarks/batch_steps.py --batches 20
    .venv/bin/python benchmarks/batch_steps.py --batches 20 --statements

Wraps, for the time of the run, the unit of work's batch steps (members locked and read,
stored events, orders, the flush and its writes), ``apply_event`` and psycopg's COPY (its
time in all, and the wait at its end per table), then runs ``batch_bench.main`` with the
arguments given and prints each step's wall time per event, counted inside
``ingest_batch`` only (not the set-up's enrolments). With ``--statements`` the flush's
pipeline is run statement by statement instead, each timed: that shows what each
statement costs, but without the pipeline's single round trip, so the total is not the
real one. The steps overlap (the flush contains its writes; the writes contain COPY), so
the figures do not add up to the total.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

import batch_bench  # noqa: E402  (benchmarks/batch_bench.py)

from setia.adapters.db import store  # noqa: E402
from setia.service import batch  # noqa: E402

TIMES: defaultdict[str, float] = defaultdict(float)
inside = False  # within ingest_batch


def timed(owner: Any, name: str, *, outer: bool = False) -> None:
    original: Callable[..., Any] = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        global inside
        if outer:
            inside = True
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            if inside:
                TIMES[name] += time.perf_counter() - started
            if outer:
                inside = False

    setattr(owner, name, wrapper)


def time_copies() -> None:
    original = psycopg.Cursor.copy

    @contextlib.contextmanager
    def copy(self: Any, statement: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
        started = time.perf_counter()
        with original(self, statement, *args, **kwargs) as cp:
            yield cp
            written = time.perf_counter()
        if inside:
            table = str(statement).split('"')[1]
            TIMES["COPY, in all"] += time.perf_counter() - started
            TIMES[f"COPY {table}: wait at its end"] += time.perf_counter() - written

    setattr(psycopg.Cursor, "copy", copy)  # noqa: B010 - patched for the run


def time_statements() -> None:
    def no_pipeline(self: Any) -> Any:
        return contextlib.nullcontext()

    setattr(psycopg.Connection, "pipeline", no_pipeline)  # noqa: B010 - patched for the run
    for name in ("execute", "executemany"):
        original = getattr(psycopg.Cursor, name)

        def wrapper(self: Any, query: Any, *args: Any, _original: Any = original,
                    **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return _original(self, query, *args, **kwargs)
            finally:
                if inside:
                    TIMES[" ".join(str(query).split())[:60]] += time.perf_counter() - started

        setattr(psycopg.Cursor, name, wrapper)


def main(argv: list[str]) -> int:
    statements = "--statements" in argv
    argv = [arg for arg in argv if arg != "--statements"]
    for name in ("preload_members", "stored_events", "preload_orders", "prepare_members",
                 "flush", "_send_writes"):
        timed(store.UnitOfWork, name)
    timed(batch, "apply_event")
    timed(batch, "ingest_batch", outer=True)
    batch_bench.ingest_batch = batch.ingest_batch  # it imported the name before
    time_copies()
    if statements:
        time_statements()
    code = batch_bench.main(argv)
    batches = int(argv[argv.index("--batches") + 1]) if "--batches" in argv else 11
    size = int(argv[argv.index("--batch-size") + 1]) if "--batch-size" in argv else 1_000
    events = (batches + 1) * size  # the warm-up batch is inside ingest_batch too
    print(f"\nwall time per event inside ingest_batch ({events:,} events):")
    for name, seconds in sorted(TIMES.items(), key=lambda item: -item[1]):
        print(f"  {seconds * 1e6 / events:8.1f} µs  {name}")
    return code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
