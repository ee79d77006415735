"""Soak benchmark: mixed traffic against one API process and one worker for a long
while, sampling their memory; outside CI (docs/operations.md has the figures).

    .venv/bin/python benchmarks/soak_bench.py                  # 10 minutes, PostgreSQL
    .venv/bin/python benchmarks/soak_bench.py --seconds 120    # shortened

What it does (everything on 127.0.0.1; the scratch database is dropped at the end):

1. creates a scratch PostgreSQL database on --postgres-url's server, migrates it, and
   starts ``setia serve --no-scheduler`` and ``setia worker`` (run-due every 30 s) on it,
   with a local webhook receiver registered for every message type;
2. enrols --members members, then --clients threads send a mix for --seconds:
   60 % single purchases, 10 % refunds of an earlier purchase, 15 % member reads,
   5 % activity reads, 5 % redemptions of 1 point, 5 % batches of 20 purchases;
3. every --sample-seconds it reads the resident memory (VmRSS) of the server and the
   worker from /proc, and the requests done so far;
4. prints each sample and a summary: requests by kind and status, and the memory of
   each process at the first sample, the first after warm-up (25 % of the run) and the
   end, with the least-squares slope (MiB per minute) over the samples after warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
SETIA = str(Path(sys.executable).parent / "setia")
PROGRAMME = ROOT / "examples" / "programs" / "kopi-setia.yaml"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@contextmanager
def scratch_database(server_url: str) -> Iterator[str]:
    name = f"setia_soak_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def receiver() -> Iterator[tuple[str, list[int]]]:
    count = [0]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("content-length", "0")))
            count[0] += 1
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hooks", count
    finally:
        server.shutdown()
        server.server_close()


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([SETIA, *args], env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--members", type=int, default=500)
    parser.add_argument("--sample-seconds", type=float, default=10)
    parser.add_argument("--postgres-url", default=os.environ.get(
        "SETIA_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"))
    opts = parser.parse_args()
    key = secrets.token_urlsafe(24)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    logs = Path(tempfile.mkdtemp(prefix="setia-soak-"))
    with scratch_database(opts.postgres_url) as db_url, receiver() as (hook_url, hooks):
        env = {**os.environ, "SETIA_DATABASE_URL": db_url, "SETIA_ADMIN_KEY": key}
        subprocess.run([SETIA, "db", "upgrade"], env=env, check=True, capture_output=True)
        server = start(["serve", "--no-scheduler", "--port", str(port)], env, logs / "serve.log")
        worker = start(["worker", "--run-due-every", "30"], env, logs / "worker.log")
        try:
            return soak(opts, base, key, hook_url, hooks, server, worker)
        finally:
            for process in (server, worker):
                process.terminate()
                process.wait(timeout=30)
            print(f"logs: {logs}")


def slope_per_minute(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB) points, in MiB per minute."""
    n = len(points)
    if n < 2:
        return 0.0
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((x - mean_x) ** 2 for x, _ in points)
    return 60 * sum((x - mean_x) * (y - mean_y) for x, y in points) / var if var else 0.0


def memory(samples: list[tuple[float, int, float, float]], warm: tuple[float, int, float, float],
           column: int) -> dict[str, float]:
    """One process's RSS: first sample, after warm-up, end, growth since warm-up, and the
    slope over the samples after warm-up."""
    first, last = samples[0], samples[-1]
    return {"start": round(first[column], 1), "warm": round(warm[column], 1),
            "end": round(last[column], 1),
            "growth_pct": round(100 * (last[column] - warm[column]) / warm[column], 1),
            "slope_mib_per_minute": round(slope_per_minute(
                [(s[0], s[column]) for s in samples if s[0] >= warm[0]]), 3)}


def soak(opts: argparse.Namespace, base: str, key: str, hook_url: str, hooks: list[int],
         server: subprocess.Popen[bytes], worker: subprocess.Popen[bytes]) -> int:
    headers = {"Authorization": f"Bearer {key}"}
    client = httpx.Client(base_url=base, headers=headers, timeout=30)
    for _ in range(300):
        try:
            if client.get("/health").status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.1)
    program = "kopi-setia"
    assert client.put(f"/v1/programs/{program}", content=PROGRAMME.read_bytes(),
                      headers={"Content-Type": "application/yaml"}).status_code in (200, 201)
    assert client.post(f"/v1/programs/{program}/webhooks", json={"url": hook_url}) \
        .status_code == 201
    for m in range(opts.members):
        client.put(f"/v1/programs/{program}/members/soak-{m}",
                   json={"email": f"soak-{m}@example.com"})
    counts: Counter[str] = Counter()
    lock = threading.Lock()
    stop = threading.Event()
    orders: list[tuple[str, str]] = []

    def purchase(rng: random.Random) -> dict[str, Any]:
        event_id = uuid.uuid4().hex
        amount = f"{rng.randint(3, 60)}.50"
        return {"id": event_id, "type": "purchase",
                "member": f"soak-{rng.randrange(opts.members)}",
                "occurred_at": "2027-03-01T10:00:00+08:00", "order_id": f"o-{event_id}",
                "amount": amount, "lines": [{"sku": "LATTE", "category": "coffee",
                                             "quantity": 1, "amount": amount}]}

    def run(index: int) -> None:
        rng = random.Random(index)
        with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
            while not stop.is_set():
                roll = rng.random()
                member = f"soak-{rng.randrange(opts.members)}"
                if roll < 0.60:
                    kind, body = "event", purchase(rng)
                    r = http.post(f"/v1/programs/{program}/events", json=body)
                    if r.status_code == 201:
                        with lock:
                            orders.append((body["member"], body["order_id"]))
                elif roll < 0.70 and orders:
                    kind = "refund"
                    with lock:
                        who, order = orders.pop(rng.randrange(len(orders)))
                    r = http.post(f"/v1/programs/{program}/events", json={
                        "id": uuid.uuid4().hex, "type": "refund", "member": who,
                        "order_id": order, "amount": "1.00",
                        "occurred_at": "2027-03-02T10:00:00+08:00"})
                elif roll < 0.85:
                    kind, r = "member", http.get(f"/v1/programs/{program}/members/{member}")
                elif roll < 0.90:
                    kind, r = "activity", http.get(
                        f"/v1/programs/{program}/members/{member}/activity")
                elif roll < 0.95:
                    kind, r = "redeem", http.post(
                        f"/v1/programs/{program}/redemptions", json={"member": member,
                                                                     "points": 1},
                        headers={"Idempotency-Key": uuid.uuid4().hex})
                else:
                    kind, r = "batch", http.post(f"/v1/programs/{program}/events/batch",
                                                 json={"events": [purchase(rng)
                                                                  for _ in range(20)]})
                with lock:
                    counts[f"{kind} {r.status_code}"] += 1

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(opts.clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    samples: list[tuple[float, int, float, float]] = []
    print("seconds  requests  server_MiB  worker_MiB  webhooks")
    while time.monotonic() - started < opts.seconds:
        time.sleep(min(opts.sample_seconds, max(0.0, opts.seconds - (time.monotonic() - started))))
        with lock:
            done = sum(counts.values())
        sample = (time.monotonic() - started, done, rss_mib(server.pid), rss_mib(worker.pid))
        samples.append(sample)
        print(f"{sample[0]:7.0f}  {done:8d}  {sample[2]:10.1f}  {sample[3]:10.1f}  {hooks[0]:8d}",
              flush=True)
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    warm = next(s for s in samples if s[0] >= opts.seconds * 0.25)
    last = samples[-1]
    summary = {
        "seconds": round(last[0]), "clients": opts.clients, "requests": last[1],
        "requests_per_second": round(last[1] / last[0], 1),
        "by_kind_and_status": dict(sorted(counts.items())),
        "warm_up_seconds": round(warm[0]),
        "server_rss_mib": memory(samples, warm, 2),
        "worker_rss_mib": memory(samples, warm, 3),
        "webhooks_received": hooks[0],
    }
    print(json.dumps(summary, indent=2))
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
