"""Ingestion and balance reads on a big PostgreSQL database against an empty one
(docs/scaling.md). Not part of the test suite.

    python benchmarks/scale_bench.py    # 1,000,000 members, 20,000,000 postings
    python benchmarks/scale_bench.py --members 100000 --postings 2000000  # shorter
    python benchmarks/scale_bench.py --keep     # keep setia_scale_big for reruns
    python benchmarks/scale_bench.py --reuse                 # measure a kept setia_scale_big

What it does:

1. Two scratch databases on --postgres-url's server, both migrated (postings and events
   partitioned by month) with the Kopi Setia programme stored:
   ``setia_scale_empty`` (1,000 members, no history) and ``setia_scale_big``.
2. Fills ``setia_scale_big`` in bulk on the server (INSERT ... SELECT generate_series,
   1,000,000 rows a statement, with a progress bar): --members members, --postings
   journal lines over 12 monthly partitions (Dec 2025 to Nov 2026), --postings / 4
   stored events (and their ids in event_ids), one lot per member; cached balances
   agree with the journal. Then VACUUM ANALYZE.
3. Times, on each database, --events purchases through ``ingest_event`` (the service
   behind POST /events; one event, one transaction) for random members, one client,
   and --reads ``get_member`` calls (the member GET: profile, tier, balances, expiring).
   Each phase is preceded by a warm-up of 100 calls that are not counted.

ratio = big / empty for throughput (>= 0.5 means "within 2x") and for p50 and p99.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from rich.progress import Progress

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from setia.adapters.db import partitions  # noqa: E402
from setia.adapters.db.engine import make_engine  # noqa: E402
from setia.adapters.db.migrate import upgrade  # noqa: E402
from setia.service.events import ingest_event  # noqa: E402
from setia.service.members import get_member, upsert_member  # noqa: E402
from setia.service.programmes import parse_text, store_programme  # noqa: E402

P = "kopi-setia"
PROGRAMME = ROOT / "examples" / "programs" / "kopi-setia.yaml"
CHUNK = 1_000_000
SERIES = "generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint))"
MEMBERS = "CAST(:members AS bigint)"


def admin_engine(url: str) -> sa.Engine:
    return sa.create_engine(sa.make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT")


def fresh_database(url: str, name: str) -> str:
    admin = admin_engine(url)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    target = sa.make_url(url).set(database=name).render_as_string(hide_password=False)
    engine = make_engine(target)
    upgrade(engine)
    store_programme(engine, parse_text(PROGRAMME.read_text()))
    with engine.begin() as conn:
        partitions.ensure_months(conn, date(2025, 12, 1), date(2026, 11, 1))
    engine.dispose()
    return target


def drop_database(url: str, name: str) -> None:
    admin = admin_engine(url)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def fill(url: str, members: int, postings: int) -> None:
    """Bulk rows on the server: members, one lot each, postings, events and event ids."""
    per_member = postings // members
    events = postings // 4
    engine = make_engine(url)
    steps = [
        ("members", members, """
            INSERT INTO members (program_id, id, attributes, enrolled_at, tier_id, tier_reviewed,
                available, pending, reserved, lot_seq, purchases, last_activity_at)
            SELECT 'kopi-setia', 'm' || g, '{}', timestamp '2025-12-01', 'member', '2026',
                   :points, 0, 0, 1, :per_member, timestamp '2026-11-01'
            FROM SERIES g"""),
        ("lots", members, """
            INSERT INTO lots (member_pk, seq, program_id, source, points, remaining,
                available_at, expires_at, pending)
            SELECT g, 1, 'kopi-setia', 'bench-' || g, :points, :points,
                   timestamp '2025-12-01', timestamp '2027-06-01', false
            FROM SERIES g"""),
        ("postings", per_member * members, """
            INSERT INTO postings (program_id, asset, member_pk, debit, credit, points, code, ref,
                rule_id, program_version, explanation, occurred_at, debit_balance_after,
                credit_balance_after)
            SELECT 'kopi-setia', 'points', 1 + (g % MEMBERS), 'issued', 'available', 10, 'earn',
                   'b-' || g, 'base', 1, '1 x RM 10.00 = 10 Beans (base)',
                   timestamp '2025-12-01' + ((g * 7919) % 31536000) * interval '1 second',
                   NULL, 10 * (1 + g / MEMBERS)
            FROM SERIES g"""),
        ("events", events, """
            INSERT INTO events (program_id, id, type, member_id, occurred_at, request_hash,
                payload, result, recorded_at)
            SELECT 'kopi-setia', 'b-' || g, 'purchase', 'm' || (1 + (g % MEMBERS)),
                   timestamp '2025-12-01' + ((g * 7919) % 31536000) * interval '1 second',
                   md5(g::text) || md5(g::text),
                   json_build_object('id', 'b-' || g, 'type', 'purchase',
                                     'member', 'm' || (1 + (g % MEMBERS)), 'amount', '10.00'),
                   json_build_object('event', 'b-' || g, 'status', 'applied', 'points', 10),
                   timestamp '2026-11-01'
            FROM SERIES g"""),
        ("event_ids", events, """
            INSERT INTO event_ids (program_id, id)
            SELECT 'kopi-setia', 'b-' || g FROM SERIES g"""),
    ]
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE events DISABLE TRIGGER events_register_id"))
    try:
        with Progress() as progress:
            for name, total, sql in steps:
                task = progress.add_task(f"{name:>9}", total=total)
                for lo in range(1, total + 1, CHUNK):
                    hi = min(total, lo + CHUNK - 1)
                    with engine.begin() as conn:
                        statement = sql.replace("SERIES", SERIES).replace("MEMBERS", MEMBERS)
                        conn.execute(sa.text(statement), {
                            "lo": lo, "hi": hi, "members": members, "points": 10 * per_member,
                            "per_member": per_member})
                    progress.update(task, completed=hi)
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE events ENABLE TRIGGER events_register_id"))
            conn.execute(sa.text(
                "SELECT setval('members_pk_seq', (SELECT max(pk) FROM members))"))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE"))
    engine.dispose()


def timed(calls: list[Callable[[], Any]], warmup: int = 100) -> dict[str, float]:
    for call in calls[:warmup]:
        call()
    latencies = []
    started = time.perf_counter()
    for call in calls[warmup:]:
        begin = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - begin)
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {"per_s": len(latencies) / elapsed,
            "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))]}


def measure(url: str, members: int, events: int, reads: int, tag: str) -> dict[str, dict]:
    engine = make_engine(url)
    rng = random.Random(7)
    now = datetime.now(UTC)

    def purchase(n: int) -> Callable[[], Any]:
        body = {"id": f"{tag}-{n}", "type": "purchase", "member": f"m{rng.randint(1, members)}",
                "order_id": f"{tag}-o-{n}", "occurred_at": now.isoformat(),
                "amount": f"{rng.randint(5, 60)}.50", "currency": "MYR", "store": "kl-01"}
        return lambda: ingest_event(engine, P, body)

    def read() -> Callable[[], Any]:
        member = f"m{rng.randint(1, members)}"
        return lambda: get_member(engine, P, member)

    result = {"ingest": timed([purchase(n) for n in range(events + 100)]),
              "read": timed([read() for _ in range(reads + 100)])}
    engine.dispose()
    return result


def sizes(url: str) -> dict[str, Any]:
    engine = make_engine(url)
    with engine.connect() as conn:
        found = {
            "members": conn.execute(sa.text("SELECT count(*) FROM members")).scalar_one(),
            "postings": conn.execute(sa.text("SELECT count(*) FROM postings")).scalar_one(),
            "events": conn.execute(sa.text("SELECT count(*) FROM events")).scalar_one(),
            "size": conn.execute(sa.text(
                "SELECT pg_size_pretty(pg_database_size(current_database()))")).scalar_one(),
        }
    engine.dispose()
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres-url",
                        default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--members", type=int, default=1_000_000)
    parser.add_argument("--postings", type=int, default=20_000_000)
    parser.add_argument("--events", type=int, default=2000, help="timed ingestions per database")
    parser.add_argument("--reads", type=int, default=4000, help="timed member reads per database")
    parser.add_argument("--keep", action="store_true", help="keep setia_scale_big afterwards")
    parser.add_argument("--reuse", action="store_true", help="measure an existing setia_scale_big")
    args = parser.parse_args()

    base = args.postgres_url
    empty = fresh_database(base, "setia_scale_empty")
    engine = make_engine(empty)
    for n in range(1, 1001):
        upsert_member(engine, P, f"m{n}", {})
    engine.dispose()
    big_name = "setia_scale_big"
    big = sa.make_url(base).set(database=big_name).render_as_string(hide_password=False)
    try:
        if not args.reuse:
            big = fresh_database(base, big_name)
            started = time.perf_counter()
            fill(big, args.members, args.postings)
            print(f"filled in {time.perf_counter() - started:.0f} s")
        print("big database:", sizes(big))
        tag = f"run{int(time.time())}"
        empty_figures = measure(empty, 1000, args.events, args.reads, tag)
        big_figures = measure(big, args.members, args.events, args.reads, tag)
    finally:
        drop_database(base, "setia_scale_empty")
        if not args.keep:
            drop_database(base, big_name)
    print(f"\n{'':8} {'database':>8} {'per s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for phase in ("ingest", "read"):
        for label, figures in (("empty", empty_figures), ("big", big_figures)):
            f = figures[phase]
            print(f"{phase:8} {label:>8} {f['per_s']:8.1f} {f['p50_ms']:8.2f} {f['p99_ms']:8.2f}")
        e, b = empty_figures[phase], big_figures[phase]
        print(f"{phase:8} {'big/empty':>8} {b['per_s'] / e['per_s']:8.2f} "
              f"{b['p50_ms'] / e['p50_ms']:8.2f} {b['p99_ms'] / e['p99_ms']:8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
