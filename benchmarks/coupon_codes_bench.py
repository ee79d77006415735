"""Time generating a batch of unique coupon codes and exporting it as CSV (docs/growth-a.md).

    python benchmarks/coupon_codes_bench.py                 # 100,000 codes, SQLite + PostgreSQL
    python benchmarks/coupon_codes_bench.py --count 20000 --sqlite-only

Per database (a fresh SQLite file in a temporary directory; a scratch PostgreSQL
database created on --postgres-url's server and dropped afterwards): migrate,
store the growth-cafe programme of the tests, then time ``generate_batch`` (the
service ``setia coupons generate`` and ``POST .../coupons/{coupon}/batches``
call: one transaction) and ``export_batch`` (the CSV), and check that the CSV
holds ``count`` distinct codes. The issue's target: 100,000 codes in under 10 s.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.growth_programme import GROWTH  # noqa: E402

from setia.adapters.db.engine import make_engine  # noqa: E402
from setia.adapters.db.migrate import upgrade  # noqa: E402
from setia.service.coupons import export_batch, generate_batch  # noqa: E402
from setia.service.programmes import store_programme  # noqa: E402


def run(url: str, count: int) -> tuple[float, float]:
    engine = make_engine(url)
    try:
        upgrade(engine)
        store_programme(engine, GROWTH)
        started = time.perf_counter()
        batch = generate_batch(engine, "growth-cafe", "cny", {"count": count}, "bench")
        generated = time.perf_counter() - started
        started = time.perf_counter()
        text = "".join(export_batch(engine, "growth-cafe", batch["id"]))
        exported = time.perf_counter() - started
        codes = {line.split(",")[0] for line in text.splitlines()[1:]}
        assert len(codes) == count, (len(codes), count)
        return generated, exported
    finally:
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--sqlite-only", action="store_true")
    parser.add_argument("--postgres-url",
                        default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        generated, exported = run(f"sqlite:///{directory}/bench.db", args.count)
        print(f"sqlite:     {args.count:,} codes generated in {generated:.2f} s, "
              f"exported as CSV in {exported:.2f} s")
    if args.sqlite_only:
        return
    admin = sa.create_engine(args.postgres_url, isolation_level="AUTOCOMMIT")
    name = f"setia_coupon_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        url = sa.make_url(args.postgres_url).set(database=name).render_as_string(
            hide_password=False)
        generated, exported = run(url, args.count)
        print(f"postgresql: {args.count:,} codes generated in {generated:.2f} s, "
              f"exported as CSV in {exported:.2f} s")
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
