"""Batches of events in process on PostgreSQL: CPU of this process and of PostgreSQL per
event (docs/benchmarks.md, "Latest round").

    .venv/bin/python benchmarks/batch_bench.py                 # 11 timed batches of 1,000
    .venv/bin/python benchmarks/batch_bench.py --batches 6 --profile

A scratch database (load_bench.py's: ``SETIA_LOADBENCH_DB``, default ``setia_loadbench``,
dropped at the end) gets Kopi Setia and --members
members; then ``ingest_batch`` (the service behind ``POST /events/batch``) applies one
warm-up batch and --batches timed batches of --batch-size purchases of random members,
one after the other. Printed per event: wall time, this process's CPU and the CPU of the
database's PostgreSQL backends (from /proc, so PostgreSQL must run on this machine). No
HTTP: benchmarks/load_bench.py measures the same batches through the API. Wall time varies
with the machine; the CPU per event is the steadier figure for an A/B comparison.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import random
import sys
import time

import sqlalchemy as sa
from load_bench import BENCH_DB, PROGRAM, member_id, purchase, scratch_database
from programmes import kopi_setia  # benchmarks/programmes.py

from setia.adapters.db.engine import make_engine
from setia.adapters.db.migrate import upgrade
from setia.service.batch import ingest_batch
from setia.service.members import upsert_member
from setia.service.programmes import store_programme


def backends_cpu(admin: sa.Engine) -> float:
    """CPU seconds used so far by the scratch database's PostgreSQL backends."""
    with admin.connect() as conn:
        pids = conn.execute(sa.text("SELECT pid FROM pg_stat_activity WHERE datname = :d"),
                            {"d": BENCH_DB}).scalars().all()
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def run(engine: sa.Engine, admin: sa.Engine, args: argparse.Namespace) -> None:
    upgrade(engine)
    store_programme(engine, kopi_setia())
    for number in range(args.members):
        upsert_member(engine, PROGRAM, member_id(number), {})
    rng = random.Random(args.seed)
    batches = [[purchase(rng, f"e{b}-{i}", args.members) for i in range(args.batch_size)]
               for b in range(args.batches + 1)]
    ingest_batch(engine, PROGRAM, batches[0])  # warm-up: caches, prepared statements
    profile = cProfile.Profile() if args.profile else None
    pg_before, cpu_before, started = backends_cpu(admin), time.process_time(), \
        time.perf_counter()
    if profile is not None:
        profile.enable()
    for batch in batches[1:]:
        results = ingest_batch(engine, PROGRAM, batch)
        if any(result["status"] != "applied" for result in results):
            raise SystemExit("a batch event was not applied")
    if profile is not None:
        profile.disable()
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_before
    pg = backends_cpu(admin) - pg_before
    events = args.batches * args.batch_size
    print(f"{events:,} events in {args.batches} batches of {args.batch_size:,}: "
          f"wall {1e6 * wall / events:.0f} µs/event ({events / wall:,.0f} events/s), "
          f"CPU: this process {1e6 * cpu / events:.0f} µs/event, "
          f"PostgreSQL {1e6 * pg / events:.0f} µs/event"
          + (" (under the profiler)" if profile is not None else ""))
    if profile is not None:
        pstats.Stats(profile).strip_dirs().sort_stats("tottime").print_stats(30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=2_000)
    parser.add_argument("--batches", type=int, default=11)
    parser.add_argument("--batch-size", type=int, default=1_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--profile", action="store_true",
                        help="cProfile the timed batches; print the top 30 by own time")
    parser.add_argument("--postgres-url",
                        default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args(argv)
    admin = sa.create_engine(args.postgres_url, isolation_level="AUTOCOMMIT")
    with scratch_database(args.postgres_url) as url:
        engine = make_engine(url)
        try:
            run(engine, admin, args)
        finally:
            engine.dispose()
    admin.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
