"""Batches of events in process on PostgreSQL: CPU of this process and of PostgreSQL per
event (docs/benchmarks.md, "Latest round").

    .venv/bin/python benchmarks/batch_bench.py                 # 11 timed batches of 1,000
    .venv/bin/python benchmarks/batch_bench.py --batches 6 --profile
    .venv/bin/python benchmarks/batch_bench.py --over-http     # the same through the API

A scratch database (load_bench.py's: ``SETIA_LOADBENCH_DB``, default ``setia_loadbench``,
dropped at the end) gets Kopi Setia and --members
members; then ``ingest_batch`` (the service behind ``POST /events/batch``) applies one
warm-up batch and --batches timed batches of --batch-size purchases of random members,
one after the other. Printed per event: wall time, this process's CPU and the CPU of the
database's PostgreSQL backends (from /proc, so PostgreSQL must run on this machine). No
HTTP: benchmarks/load_bench.py measures the same batches through the API under load. With
--over-http the same batches go one after the other to ``setia serve`` (a subprocess on a
free port, one keep-alive client) and the server's CPU (all its threads) is read from /proc
instead of this process's: the difference to the run without it is what the HTTP layer
costs per event. Wall time varies with the machine; the CPU per event is the steadier
figure for an A/B comparison.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import os
import pstats
import random
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from load_bench import (
    BENCH_DB,
    BIN,
    PROGRAM,
    KeepAlive,
    Server,
    free_port,
    member_id,
    purchase,
    scratch_database,
)
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
    return sum(process_cpu(pid) for pid in pids)


def process_cpu(pid: int) -> float:
    """CPU seconds used so far by process ``pid`` (all its threads)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(engine: sa.Engine, admin: sa.Engine, url: str, args: argparse.Namespace) -> None:
    upgrade(engine)
    store_programme(engine, kopi_setia())
    for number in range(args.members):
        upsert_member(engine, PROGRAM, member_id(number), {})
    rng = random.Random(args.seed)
    batches = [[purchase(rng, f"e{b}-{i}", args.members) for i in range(args.batch_size)]
               for b in range(args.batches + 1)]
    if args.over_http:
        with tempfile.TemporaryDirectory(prefix="setia-batchbench-") as tmp, \
                contextlib.ExitStack() as stack:
            key = secrets.token_urlsafe(24)
            env = {**os.environ, "SETIA_DATABASE_URL": url, "SETIA_ADMIN_KEY": key,
                   "SETIA_RATE_LIMIT_PER_IP": "1000000/second",
                   "SETIA_RATE_LIMIT_PER_KEY": "1000000/second"}
            port = free_port()
            server = Server([str(BIN / "setia"), "serve", "--no-scheduler", "--host",
                             "127.0.0.1", "--port", str(port)], env, port,
                            Path(tmp) / "server.log")
            try:
                server.wait_ready()
                clients = [stack.enter_context(contextlib.closing(
                    KeepAlive(server.base_url, {"Authorization": f"Bearer {key}"})))
                    for _ in range(args.clients)]
                bodies = [orjson.dumps({"events": batch}) for batch in batches]

                def post(number: int, client: KeepAlive = clients[0]) -> list[dict[str, Any]]:
                    answer = client.post(f"/v1/programs/{PROGRAM}/events/batch",
                                         content=bodies[number],
                                         headers={"Content-Type": "application/json"})
                    if answer.status_code != 200:
                        raise SystemExit(f"{answer.status_code}: {answer.text[:300]}")
                    return list(answer.json()["results"])

                def post_all(numbers: range) -> list[dict[str, Any]]:
                    """The batches shared out among the clients, sent at once."""
                    if len(clients) == 1:
                        return [result for number in numbers for result in post(number)]
                    with ThreadPoolExecutor(len(clients)) as pool:
                        shares = pool.map(
                            lambda c: [result for number in numbers[c::len(clients)]
                                       for result in post(number, clients[c])],
                            range(len(clients)))
                        return [result for share in shares for result in share]

                timed(admin, args, post_all, lambda: process_cpu(server.pid), "the server")
            finally:
                server.stop()
    else:
        timed(admin, args, lambda numbers: [result for number in numbers
                                        for result in ingest_batch(engine, PROGRAM,
                                                                   batches[number])],
              time.process_time, "this process")


def timed(admin: sa.Engine, args: argparse.Namespace,
          send: Callable[[range], list[dict[str, Any]]], cpu_now: Callable[[], float],
          who: str) -> None:
    """Batch 0 as a warm-up (caches, prepared statements), then the timed batches."""
    send(range(1))
    profile = cProfile.Profile() if args.profile and not args.over_http else None
    pg_before, cpu_before, started = backends_cpu(admin), cpu_now(), time.perf_counter()
    if profile is not None:
        profile.enable()
    results = send(range(1, args.batches + 1))
    if len(results) != args.batches * args.batch_size or any(
            result["status"] != "applied" for result in results):
        raise SystemExit("a batch event was not applied")
    if profile is not None:
        profile.disable()
    wall, cpu = time.perf_counter() - started, cpu_now() - cpu_before
    pg = backends_cpu(admin) - pg_before
    events = args.batches * args.batch_size
    print(f"{events:,} events in {args.batches} batches of {args.batch_size:,}"
          f"{' over HTTP' if args.over_http else ''}"
          f"{f' from {args.clients} clients' if args.clients > 1 else ''}: "
          f"wall {1e6 * wall / events:.0f} µs/event ({events / wall:,.0f} events/s), "
          f"CPU: {who} {1e6 * cpu / events:.0f} µs/event, "
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
    parser.add_argument("--clients", type=int, default=1,
                        help="with --over-http: clients sending batches at once (their "
                        "random members overlap, so their batches contend for row locks)")
    parser.add_argument("--over-http", action="store_true",
                        help="send the batches to `setia serve` instead (no --profile)")
    parser.add_argument("--postgres-url",
                        default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args(argv)
    admin = sa.create_engine(args.postgres_url, isolation_level="AUTOCOMMIT")
    with scratch_database(args.postgres_url) as url:
        engine = make_engine(url)
        try:
            run(engine, admin, url, args)
        finally:
            engine.dispose()
    admin.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
