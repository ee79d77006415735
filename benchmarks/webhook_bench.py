"""Webhook delivery throughput: one ``setia worker`` process draining a queue of due
webhooks into a real local receiver; outside CI (docs/operations.md has the figures).

    .venv/bin/python benchmarks/webhook_bench.py --deliveries 1000 --receiver-ms 50
    .venv/bin/python benchmarks/webhook_bench.py --worker-args="--webhook-concurrency 1"

What it does (everything on 127.0.0.1; the scratch database is dropped at the end):

1. creates a scratch PostgreSQL database on --postgres-url's server, migrates it, loads a
   small programme and registers one endpoint for ``member.enrolled`` at the receiver of
   tests/receivers.py (a threading HTTP server that verifies each Standard Webhooks
   signature, answering 200 after --receiver-ms, or 500 for every --fail-every'th request);
2. enrols --deliveries members (one ``member.enrolled`` outbox row each) before any
   worker runs;
3. starts ``setia worker --run-due-every 0`` (plus --worker-args) and waits until every
   delivery is delivered, bounded by --max-seconds;
4. prints deliveries per second as the receiver saw them (first to last request, so the
   worker's start-up does not count), the worker's CPU time per delivery from its first
   send on (from /proc), and the final delivery statuses.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.receivers import WebhookReceiver, webhook_receiver  # noqa: E402

from setia.adapters.db.engine import make_engine  # noqa: E402
from setia.adapters.db.migrate import upgrade  # noqa: E402
from setia.service.deliveries import add_endpoint  # noqa: E402
from setia.service.members import upsert_member  # noqa: E402
from setia.service.programmes import store_programme  # noqa: E402

SETIA = str(Path(sys.executable).parent / "setia")
P = "hooks"
PROGRAMME: dict[str, Any] = {
    "id": P, "name": "Hook Cafe", "currency": "MYR", "timezone": "Asia/Kuala_Lumpur",
    "locale": "en", "points": {"name": "Beans", "pending_days": 0,
                               "expiry": {"policy": "none"}},
    "earn": [{"id": "base", "on": "purchase", "rate": 1}],
}


@contextmanager
def scratch_database(server_url: str) -> Iterator[str]:
    name = f"setia_hookbench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def delivery_statuses(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {status: int(count) for status, count in conn.execute(sa.text(
            "SELECT status, count(*) FROM deliveries GROUP BY status ORDER BY status"))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--deliveries", type=int, default=1000)
    parser.add_argument("--worker-args", default="", help="extra `setia worker` options")
    parser.add_argument("--fail-every", type=int, default=0,
                        help="the receiver answers 500 to every Nth request (0: never)")
    parser.add_argument("--receiver-ms", type=float, default=0,
                        help="the receiver answers after this many ms (a remote receiver)")
    parser.add_argument("--max-seconds", type=float, default=540)
    parser.add_argument("--postgres-url", default=os.environ.get(
        "SETIA_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"))
    opts = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="setia-hookbench-"))
    receiver = WebhookReceiver()
    if opts.receiver_ms:  # "stall": answer (200 if the signature holds) after a pause
        receiver.default, receiver.stall_seconds = "stall", opts.receiver_ms / 1000
    if opts.fail_every:  # every Nth request answered with HTTP 500
        receiver.script = ([receiver.default] * (opts.fail_every - 1) + ["fail"]) * (
            opts.deliveries // opts.fail_every + 1)
    with scratch_database(opts.postgres_url) as db_url, webhook_receiver(receiver):
        engine = make_engine(db_url)
        try:
            upgrade(engine)
            now = datetime.now(UTC)
            store_programme(engine, dict(PROGRAMME), clock=lambda: now)
            receiver.secret = add_endpoint(engine, P, receiver.url, ["member.enrolled"],
                                           now)["secret"]
            for m in range(opts.deliveries):
                upsert_member(engine, P, f"m-{m}", {"name": "Aisyah"}, lambda: now)
            return drain(opts, engine, db_url, receiver, logs)
        finally:
            engine.dispose()


def drain(opts: argparse.Namespace, engine: sa.Engine, db_url: str, receiver: WebhookReceiver,
          logs: Path) -> int:
    env = {**os.environ, "SETIA_DATABASE_URL": db_url}
    command = [SETIA, "worker", "--run-due-every", "0", *shlex.split(opts.worker_args)]
    with (logs / "worker.log").open("wb") as out:
        worker = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL)
    started = time.monotonic()
    cpu_at_first: float | None = None  # the worker's start-up (imports) does not count
    try:
        while delivery_statuses(engine).get("delivered", 0) < opts.deliveries:
            if cpu_at_first is None and receiver.received:
                cpu_at_first = cpu_seconds(worker.pid)
            if worker.poll() is not None:
                raise SystemExit(f"the worker exited; log: {logs / 'worker.log'}")
            if time.monotonic() - started > opts.max_seconds:
                break
            time.sleep(0.2)
        cpu = cpu_seconds(worker.pid)
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    statuses = delivery_statuses(engine)
    with receiver.lock:
        times = sorted(r.arrived_at for r in receiver.received)
    span = times[-1] - times[0] if len(times) > 1 else float("nan")
    delivered = statuses.get("delivered", 0)
    summary = {
        "command": " ".join(command[1:]),
        "deliveries": opts.deliveries, "receiver_ms": opts.receiver_ms,
        "requests_received": len(times),
        "statuses": statuses,
        "verified": all(r.verified for r in receiver.received),
        "distinct_webhook_ids": len({r.webhook_id for r in receiver.received}),
        "receiver_seconds": round(span, 2),
        "deliveries_per_second": round((len(times) - 1) / span, 1),
        "worker_cpu_seconds": round(cpu, 2),
        "worker_cpu_ms_per_delivery": round(
            1000 * (cpu - (cpu_at_first or 0.0)) / max(delivered, 1), 2),
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
