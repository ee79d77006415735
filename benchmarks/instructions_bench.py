"""Instructions the API's Python runs per event, counted by valgrind (callgrind), with a raw
baseline counted the same way (docs/benchmarks-api.md, "Instructions per event").

    .venv/bin/python benchmarks/instructions_bench.py                  # about 3 minutes
    .venv/bin/python benchmarks/instructions_bench.py --only single --events 200

Timings on this kind of machine move by a third from one run to the next (the machine is
shared and changes between sessions), so a change worth 5-10 % cannot be told from noise
by timing it. An instruction count can: callgrind counts what the process executes, the
same for the same code and inputs however busy or fast the machine is.

A scratch PostgreSQL database (load_bench.py's: ``SETIA_LOADBENCH_DB``, default
``setia_loadbench``; dropped at the end) gets Kopi Setia and --members members. Then this
script runs itself under ``valgrind --tool=callgrind`` as a child, twice per mode: both
runs start the interpreter, import Setia and warm up (the programme compiled, the
statements prepared); one then applies --events events and the other none. The
difference between the two totals, divided by --events, is the count per event, with
start-up and warm-up taken out. Modes:

- ``single``: ``ingest_event`` (the service behind ``POST /events``), one transaction per
  purchase, purchases of 1-4 lines of random members as load_bench.py sends them;
- ``batch``: ``ingest_batch`` (behind ``POST /events/batch``), the same purchases in
  batches of --batch-size;
- ``raw``, the baseline: per event, 2 rows of ``postings`` (the engine writes 2.1 per
  purchase of this programme) inserted with the driver's ``executemany`` in a transaction
  of their own, no domain logic: load_bench.py's ``raw_per_event``.

ratio = raw instructions per event / Setia's (1.0: the engine's Python costs no more than
writing its journal rows). Only this process is counted: PostgreSQL's work for the same
statements is another process's (load_bench.py and batch_bench.py read its CPU time).
The HTTP layer is not in these counts either (benchmarks/http_layer_bench.py measures it).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from load_bench import (
    INSERT_POSTING,
    PROGRAM,
    baseline_row,
    member_id,
    member_pks,
    purchase,
    scratch_database,
)
from programmes import kopi_setia  # benchmarks/programmes.py

from setia.adapters.db.engine import make_engine
from setia.adapters.db.migrate import upgrade
from setia.service.batch import ingest_batch
from setia.service.events import ingest_event
from setia.service.members import upsert_member
from setia.service.programmes import store_programme

WARMUP_EVENTS = 30
RAW_ROWS_PER_EVENT = 2
MODES = ("single", "batch", "raw")


def child(mode: str, url: str, events: int, batch_size: int, members: int, seed: int,
          tag: str) -> None:
    """Warm up, then apply ``events`` events (none when 0); runs under valgrind."""
    engine = make_engine(url)
    rng = random.Random(seed)  # the same purchases and members in both runs of a mode
    if mode == "raw":
        pks = member_pks(engine)
        start = random.Random(tag).randrange(10**6) * 1000  # refs differ between runs

        def raw(count: int, first: int) -> None:
            for n in range(first, first + count):
                rows = [baseline_row(start + n * RAW_ROWS_PER_EVENT + i, pks)
                        for i in range(RAW_ROWS_PER_EVENT)]
                with engine.begin() as conn:
                    conn.exec_driver_sql(INSERT_POSTING, rows)

        raw(WARMUP_EVENTS, 0)
        raw(events, WARMUP_EVENTS)
        return
    warmup = batch_size if mode == "batch" else WARMUP_EVENTS
    made = [purchase(rng, f"{tag}-{n}", members) for n in range(warmup + events)]
    if mode == "single":
        for event in made:
            ingest_event(engine, PROGRAM, event)
    else:
        for first in range(0, len(made), batch_size):
            results = ingest_batch(engine, PROGRAM, made[first:first + batch_size])
            if any(result["status"] != "applied" for result in results):
                raise SystemExit("a batch event was not applied")


def counted(mode: str, url: str, events: int, args: argparse.Namespace) -> int:
    """Instructions of one child run under callgrind."""
    tag = f"{mode}{events}x{time.time_ns()}"
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
               sys.executable, __file__, "--child", mode, "--url", url,
               "--events", str(events), "--batch-size", str(args.batch_size),
               "--members", str(args.members), "--seed", str(args.seed), "--tag", tag]
    done = subprocess.run(command, capture_output=True, text=True, check=False,
                          env={**os.environ, "PYTHONHASHSEED": "0"})
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"the {mode} child failed: {done.stderr.strip()[-600:]}")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=300,
                        help="events counted per mode (batch: rounded to whole batches)")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--members", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--only", choices=MODES, action="append",
                        help="measure only this mode (repeatable); default: all three")
    parser.add_argument("--postgres-url",
                        default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--tag", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.url, args.events, args.batch_size, args.members, args.seed,
              args.tag)
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (Debian package valgrind)", file=sys.stderr)
        return 2
    modes = args.only or list(MODES)
    counts = {mode: args.events for mode in modes}
    if "batch" in counts:
        counts["batch"] = max(1, round(args.events / args.batch_size)) * args.batch_size
    with scratch_database(args.postgres_url) as url:
        engine = make_engine(url)
        upgrade(engine)
        store_programme(engine, kopi_setia())
        for number in range(args.members):
            upsert_member(engine, PROGRAM, member_id(number), {})
        engine.dispose()
        started = time.perf_counter()
        runs = [(mode, n) for mode in modes for n in (0, counts[mode])]
        # Two at a time (the machine's two cores): the counts do not depend on it.
        with ThreadPoolExecutor(max_workers=2) as pool:
            totals = dict(zip(runs, pool.map(lambda run: counted(run[0], url, run[1], args),
                                             runs), strict=True))
    per_event = {mode: (totals[(mode, counts[mode])] - totals[(mode, 0)]) / counts[mode]
                 for mode in modes}
    seconds = time.perf_counter() - started
    print(f"instructions per event in this process (callgrind; {seconds:.0f} s)")
    for mode in modes:
        print(f"  {mode:<7} {per_event[mode] / 1000:9,.0f} k  ({counts[mode]:,} events)")
    if "raw" in per_event:
        for mode in (m for m in modes if m != "raw"):
            print(f"ratio {mode}: raw {per_event['raw'] / 1000:,.0f} k / {mode} "
                  f"{per_event[mode] / 1000:,.0f} k -> {per_event['raw'] / per_event[mode]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
