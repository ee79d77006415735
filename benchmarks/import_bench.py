"""Throughput of ``setia import events`` against a raw-insert baseline (docs/benchmarks.md).

    python benchmarks/import_bench.py                      # 100,000 events, SQLite + PostgreSQL
    python benchmarks/import_bench.py --sqlite-only --events 20000
    python benchmarks/import_bench.py --profile            # also cProfile one SQLite import

What it does, per database (a fresh SQLite file; a scratch PostgreSQL database
``setia_bench`` created on --postgres-url's server and dropped afterwards):

1. migrate, store the Kopi Setia programme with ``auto_enroll: true`` (so each
   member is enrolled by its first event: a signup event and its welcome points);
2. time ``import_events`` (the service the CLI calls, batch_size 1000) on the
   generated purchases (fixed seed, so every run and every database sees the
   same events), written as JSON Lines files of 5,000 events imported in order;
   once --import-budget seconds are spent, it stops at the next file boundary
   and reports over the events imported so far (--import-budget 0: all);
3. count the postings (journal rows) the import wrote, then time the baseline:
   that many raw rows inserted into the same database's ``postings`` table with
   the driver's executemany, 1000 rows per transaction, no domain logic at all.

ratio = import throughput in postings/s / baseline throughput in postings/s
(= baseline seconds / import seconds). 1.0 would mean the engine costs nothing
beyond writing its journal rows; the issue's target is >= 0.25.

The whole run is bounded by --max-seconds (default 300): past it the script
stops, drops its scratch database and exits 2. With --profile, the first
--profile-events events are imported once more under cProfile (fresh SQLite).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import platform
import pstats
import random
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from programmes import CHANNELS, MENU, STORES, kopi_setia  # benchmarks/programmes.py

from setia.adapters.db.engine import make_engine
from setia.adapters.db.migrate import upgrade
from setia.service.importer import import_events
from setia.service.programmes import store_programme

ROOT = Path(__file__).resolve().parents[1]
PROGRAM = "kopi-setia"
BENCH_DB = "setia_bench"
BATCH = 1000
CHUNK = 5000  # events per file; the import budget is checked between files
TARGET_EVENTS_PER_S = 20_000
TARGET_RATIO = 0.25

MYT = timezone(timedelta(hours=8))  # the till sends local times with their offset


class OutOfTime(Exception):
    pass


# --------------------------------------------------------------------------- data


def generate_events(folder: Path, events: int, members: int, seed: int) -> list[Path]:
    """Purchases spread over 2027 in time order, 1-4 distinct lines each, in MYR.

    Written as consecutive JSON Lines files of CHUNK events each, so that an import can
    stop at a chunk boundary when its time budget is spent.
    """
    rng = random.Random(seed)
    start = datetime(2027, 1, 1, tzinfo=UTC)
    year = 365 * 24 * 3600
    moments = sorted(rng.randrange(year) for _ in range(events))
    paths: list[Path] = []
    handle: io.TextIOWrapper | None = None
    try:
        for number, offset in enumerate(moments):
            if number % CHUNK == 0:
                if handle is not None:
                    handle.close()
                paths.append(folder / f"events-{len(paths):03d}.jsonl")
                handle = paths[-1].open("w", encoding="utf-8")
            assert handle is not None
            chosen = [(item, rng.randint(1, 2)) for item in rng.sample(MENU, rng.randint(1, 4))]
            lines = [{"sku": sku, "category": category, "quantity": quantity,
                      "amount": str(price * quantity)}
                     for (sku, category, price), quantity in chosen]
            when = (start + timedelta(seconds=offset)).astimezone(MYT).isoformat()
            row = {
                "id": f"bench-{number:07d}", "type": "purchase",
                "member": f"m{rng.randrange(members):05d}",
                "occurred_at": when, "order_id": f"ord-{number:07d}",
                "amount": str(sum((Decimal(line["amount"]) for line in lines), Decimal("0"))),
                "currency": "MYR", "store": rng.choice(STORES), "channel": rng.choice(CHANNELS),
                "lines": lines,
            }
            handle.write(json.dumps(row, separators=(",", ":")) + "\n")
    finally:
        if handle is not None:
            handle.close()
    return paths


ALL_SECTIONS = False  # --all-sections


def programme_document() -> dict[str, Any]:
    document = kopi_setia(all_sections=ALL_SECTIONS)
    document["auto_enroll"] = True
    return document


# --------------------------------------------------------------------------- databases


@contextlib.contextmanager
def sqlite_database(folder: Path) -> Iterator[sa.Engine]:
    engine = make_engine(f"sqlite:///{folder / 'bench.db'}")
    try:
        yield engine
    finally:
        engine.dispose()


@contextlib.contextmanager
def postgres_database(server_url: str) -> Iterator[sa.Engine]:
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{BENCH_DB}"'))
    url = sa.make_url(server_url).set(database=BENCH_DB).render_as_string(hide_password=False)
    engine = make_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)'))
        admin.dispose()


def count_postings(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM postings")).scalar_one())


# --------------------------------------------------------------------------- measurements


def timed_import(engine: sa.Engine, paths: list[Path], budget: float,
                 profile: cProfile.Profile | None = None) -> dict[str, Any]:
    """Import the chunk files in order; stop after the chunk that spends ``budget`` (0: none)."""
    upgrade(engine)
    store_programme(engine, programme_document())
    seconds = 0.0
    events = 0
    for path in paths:
        started = time.perf_counter()
        if profile is not None:
            profile.enable()
        summary = import_events(engine, PROGRAM, path, batch_size=BATCH)
        if profile is not None:
            profile.disable()
        seconds += time.perf_counter() - started
        if summary["rejected"] or summary["applied"] != summary["rows"]:
            raise SystemExit(f"import of {path.name} did not apply every row: {summary}")
        events += summary["rows"]
        if budget and seconds >= budget:
            break
    return {"seconds": seconds, "events": events, "postings": count_postings(engine)}


def baseline_rows(count: int, members: int) -> Iterator[tuple[Any, ...]]:
    """Journal rows shaped like the importer's: earn postings with every column filled."""
    base = datetime(2027, 1, 1)
    for n in range(count):
        yield (PROGRAM, "points", 1 + n % members, "earned", "member.pending", 1 + n % 40,
               "earn", f"bench-{n:07d}", "base", 1, "1 Bean per MYR 1 on MYR 23.50",
               base + timedelta(seconds=n), None, 1 + n % 40)


def timed_baseline(engine: sa.Engine, rows: int, members: int) -> float:
    """Seconds to insert ``rows`` postings with executemany, BATCH rows per transaction."""
    placeholder = "?" if engine.dialect.name == "sqlite" else "%s"
    columns = ("program_id, asset, member_pk, debit, credit, points, code, ref, rule_id, "
               "program_version, explanation, occurred_at, debit_balance_after, "
               "credit_balance_after")
    sql = f"INSERT INTO postings ({columns}) VALUES ({', '.join([placeholder] * 14)})"
    data = list(baseline_rows(rows, members))
    started = time.perf_counter()
    for first in range(0, len(data), BATCH):
        with engine.begin() as conn:  # BEGIN IMMEDIATE on SQLite, as the importer's writes
            conn.exec_driver_sql(sql, data[first:first + BATCH])  # a list: cursor.executemany
    return time.perf_counter() - started


def measure(name: str, engine: sa.Engine, paths: list[Path], members: int, budget: float
            ) -> dict[str, Any]:
    print(f"[{name}] importing {len(paths)} file(s) of up to {CHUNK:,} events "
          f"(budget {budget or 'none'} s) ...", flush=True)
    imported = timed_import(engine, paths, budget)
    events = imported["events"]
    postings = imported["postings"]
    print(f"[{name}] baseline: inserting {postings:,} raw postings ...", flush=True)
    baseline_s = timed_baseline(engine, postings, members)
    import_s = imported["seconds"]
    return {
        "database": name,
        "events": events,
        "postings": postings,
        "postings_per_event": postings / events,
        "import_s": import_s,
        "events_per_s": events / import_s,
        "import_postings_per_s": postings / import_s,
        "baseline_s": baseline_s,
        "baseline_postings_per_s": postings / baseline_s,
        "ratio": baseline_s / import_s,
    }


def print_results(results: list[dict[str, Any]], generated: int) -> None:
    header = (f"{'database':<10} {'events':>8} {'postings':>9} {'post/ev':>7} {'import s':>9} "
              f"{'events/s':>9} {'postings/s':>11} {'raw s':>7} {'raw post/s':>11} {'ratio':>6}")
    print()
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r['database']:<10} {r['events']:>8,} {r['postings']:>9,} "
              f"{r['postings_per_event']:>7.2f} {r['import_s']:>9.2f} {r['events_per_s']:>9,.0f} "
              f"{r['import_postings_per_s']:>11,.0f} {r['baseline_s']:>7.2f} "
              f"{r['baseline_postings_per_s']:>11,.0f} {r['ratio']:>6.3f}")
    for r in results:
        if r["events"] < generated:
            print(f"note [{r['database']}]: the import budget ran out after {r['events']:,} of "
                  f"{generated:,} events; the figures are over those events "
                  "(--import-budget 0 imports all)")
    print()
    print("ratio = import throughput in postings/s / raw insert throughput in postings/s")
    print("        (raw = executemany of the same number of postings rows, 1000 per transaction)")
    for r in results:
        verdict = []
        if r["database"] == "sqlite":
            ok = r["events_per_s"] >= TARGET_EVENTS_PER_S
            verdict.append(f"events/s {r['events_per_s']:,.0f} "
                           f"{'>=' if ok else '<'} {TARGET_EVENTS_PER_S:,}: "
                           f"{'met' if ok else 'NOT met'}")
        ok = r["ratio"] >= TARGET_RATIO
        verdict.append(f"ratio {r['ratio']:.3f} {'>=' if ok else '<'} {TARGET_RATIO}: "
                       f"{'met' if ok else 'NOT met'}")
        print(f"target [{r['database']}]: " + "; ".join(verdict))


def profile_import(folder: Path, paths: list[Path], top: int = 15) -> None:
    print(f"\n[profile] cProfile of a SQLite import of {len(paths)} file(s) "
          "(fresh database) ...", flush=True)
    profile = cProfile.Profile()
    with sqlite_database(folder) as engine:
        result = timed_import(engine, paths, 0, profile)
    print(f"[profile] {result['events']:,} events in {result['seconds']:.2f} s "
          f"under the profiler")
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.strip_dirs().sort_stats("cumulative").print_stats(top)
    print(out.getvalue())
    out = io.StringIO()  # where the time is spent in the function itself
    pstats.Stats(profile, stream=out).strip_dirs().sort_stats("tottime").print_stats(top)
    print("[profile] top by own time (tottime):")
    text = out.getvalue()
    print(text[text.find("   ncalls"):])


def statement_times(folder: Path, paths: list[Path], top: int = 14) -> None:
    """SQLite's own share of an import: every statement timed around the driver call
    (SQLAlchemy's cursor events; the flush's executemany calls are SQLite's C code), per
    statement kind, in microseconds per imported event. Commits are not included."""
    print(f"\n[statements] a SQLite import of {len(paths)} file(s), every statement timed "
          "(fresh database) ...", flush=True)
    spent: dict[str, float] = defaultdict(float)
    rows: Counter[str] = Counter()
    started: list[float] = []
    with sqlite_database(folder) as engine:
        @sa.event.listens_for(engine, "before_cursor_execute")
        def before(*_args: Any) -> None:
            started.append(time.perf_counter())

        @sa.event.listens_for(engine, "after_cursor_execute")
        def after(_conn: Any, _cursor: Any, statement: str, params: Any, _context: Any,
                  executemany: bool) -> None:
            kind = " ".join(statement.split()[:3])[:48]
            spent[kind] += time.perf_counter() - started.pop()
            rows[kind] += len(params) if executemany else 1

        result = timed_import(engine, paths, 0)
    events = result["events"]
    print(f"[statements] {events:,} events in {result['seconds']:.2f} s "
          f"({1e6 * result['seconds'] / events:.0f} µs per event with the timing)")
    for kind, seconds in sorted(spent.items(), key=lambda item: -item[1])[:top]:
        print(f"  {1e6 * seconds / events:7.1f} µs/event  {rows[kind] / events:5.2f} rows/event"
              f"  {kind}")
    print(f"  {1e6 * sum(spent.values()) / events:7.1f} µs/event in SQLite's statements "
          "in all (20,000 events/s leaves 50 µs per event for everything)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--members", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=2027)
    parser.add_argument("--postgres-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/"
                        "postgres", help="a server to create the scratch database setia_bench on")
    parser.add_argument("--sqlite-only", action="store_true")
    parser.add_argument("--all-sections", action="store_true",
                        help="keep Kopi Setia's growth and trust sections "
                        "(benchmarks/programmes.py)")
    parser.add_argument("--profile", action="store_true",
                        help="also cProfile one SQLite import; print the top 15 cumulative")
    parser.add_argument("--import-budget", type=float, default=90,
                        help="seconds per database import; it stops at the next "
                        f"{CHUNK:,}-event file boundary after this (0: import everything)")
    parser.add_argument("--statement-times", action="store_true",
                        help="also time every SQL statement of one SQLite import (SQLite's "
                        "own share of the import, per statement kind)")
    parser.add_argument("--profile-events", type=int, default=10_000,
                        help="events imported under the profiler")
    parser.add_argument("--max-seconds", type=int, default=300,
                        help="stop (exit 2) if the whole run takes longer")
    args = parser.parse_args(argv)
    global ALL_SECTIONS
    ALL_SECTIONS = args.all_sections

    def out_of_time(_signum: int, _frame: Any) -> None:
        raise OutOfTime(f"the run took longer than --max-seconds {args.max_seconds}")

    signal.signal(signal.SIGALRM, out_of_time)
    signal.alarm(args.max_seconds)
    started = time.perf_counter()
    print(f"python {platform.python_version()}, {platform.system()} {platform.machine()}, "
          f"{os.cpu_count()} CPUs; sqlalchemy {sa.__version__}")
    try:
        with tempfile.TemporaryDirectory(prefix="setia-bench-") as tmp:
            folder = Path(tmp)
            paths = generate_events(folder, args.events, args.members, args.seed)
            size = sum(p.stat().st_size for p in paths) / 1e6
            print(f"generated {args.events:,} purchases for {args.members:,} members "
                  f"(seed {args.seed}): {size:.1f} MB of JSON Lines in {len(paths)} file(s)")
            results = []
            with sqlite_database(folder) as engine:
                results.append(measure("sqlite", engine, paths, args.members,
                                       args.import_budget))
            if not args.sqlite_only:
                with postgres_database(args.postgres_url) as engine:
                    results.append(measure("postgresql", engine, paths, args.members,
                                           args.import_budget))
            print_results(results, args.events)
            if args.profile:
                (folder / "profile").mkdir()
                profile_import(folder / "profile", paths[:max(1, -(-args.profile_events // CHUNK))])
            if args.statement_times:
                (folder / "statements").mkdir()
                statement_times(folder / "statements", paths)
    except OutOfTime as exc:
        print(f"\naborted: {exc}", file=sys.stderr)
        return 2
    finally:
        signal.alarm(0)
    print(f"total run time {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
