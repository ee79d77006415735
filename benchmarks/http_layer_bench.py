"""CPU per request of the API's HTTP layer alone: the application called as uvicorn calls it
(ASGI, in this process), with the services replaced by stubs that answer a fixed result
at once, so that only the HTTP side is measured: routing, authentication, body parsing,
the thread hand-off, rendering, rate limits, headers, the log line and the metric.

    .venv/bin/python benchmarks/http_layer_bench.py [--requests 20000] [--clients 16]

Measured in the same run, on the same requests:
- **FastAPI routes**: ``create_app(engine, live_routes=False)``, every request through
  FastAPI's routing, dependencies and middleware (the way before the live routes);
- **live routes**: ``create_app(engine)``, the live path's requests answered by
  ``entrypoints/api/live.py``.
ratio = live CPU per request / FastAPI CPU per request (lower is better). CPU is the
process's (every thread's) CPU time from ``time.process_time``; the log line goes to
/dev/null. uvicorn's own parsing and socket writes are not included here.

``--over-http`` measures the same two applications served by uvicorn as ``setia serve``
runs them (its protocol and settings, the startup heap frozen, the log line to a file),
each in a process of its own, loaded for ``--seconds`` by ``--clients`` keep-alive
clients in this process: the server process's CPU per request from /proc, uvicorn
included. Code from before the live routes is served the way its ``setia serve`` did
(httptools, uvloop, no access log).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from setia.adapters.db.engine import make_engine
from setia.entrypoints.api.app import create_app
from setia.entrypoints.observability import configure_logging
from setia.service import batch, events, members

KEY = "bench-http-layer-admin-key-0123456789"
PROGRAM = "kopi-setia"
EVENT = {"id": "e-1", "type": "purchase", "member": "m00001",
         "occurred_at": "2027-03-01T10:00:00+08:00", "order_id": "o-1", "amount": "23.40",
         "currency": "MYR", "store": "kl-01", "channel": "app",
         "lines": [{"sku": "latte", "category": "coffee", "quantity": 2, "amount": "15.80"},
                   {"sku": "croissant", "category": "pastry", "quantity": 1,
                    "amount": "7.60"}]}
RESULT = {"event": "e-1", "status": "applied", "points": 54,
          "postings": [{"rule": "base", "points": 23, "explanation": "1 x RM 23.40 = 23"},
                       {"rule": "pastry-bonus", "points": 7, "explanation": "1 x RM 7.60"},
                       {"rule": "app-orders", "points": 11, "explanation": "0.5 x RM 23.40"}],
          "balance": {"available": 1054, "pending": 0}, "tier": "member"}
VIEW = {"id": "m00001", "name": None, "email": None, "phone": None, "birthday": None,
        "attributes": {}, "enrolled_at": "2027-01-01T01:00:00+00:00",
        "tier": {"id": "member", "name": "Member", "since": "2027-01-01"},
        "balances": {"points": {"available": 1054, "pending": 0, "expiring": []}},
        "progress": {"metric": "spend", "value": "234.00", "next": "gold"}}


def stub_services() -> None:
    events.ingest_event = lambda engine, program, body, *a, **k: dict(RESULT)  # type: ignore
    members.get_member = lambda engine, program, member, *a, **k: dict(VIEW)  # type: ignore
    batch.ingest_batch = lambda engine, program, evs, *a, **k: [dict(RESULT) for _ in evs]  # type: ignore


def scope_of(method: str, path: str, body: bytes | None) -> dict[str, Any]:
    headers = [(b"host", b"127.0.0.1:8000"), (b"accept-encoding", b"identity"),
               (b"authorization", f"Bearer {KEY}".encode())]
    if body is not None:
        headers += [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())]
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1", "server": ("127.0.0.1", 8000),
            "client": ("127.0.0.1", 50000), "scheme": "http", "method": method,
            "root_path": "", "path": path, "raw_path": path.encode(), "query_string": b"",
            "headers": headers, "state": {}}


async def drive(app: Any, method: str, path: str, body: bytes | None, requests: int,
                clients: int) -> list[int]:
    statuses: list[int] = []

    async def client(count: int) -> None:
        for _ in range(count):
            sent = False

            async def receive() -> dict[str, Any]:
                nonlocal sent
                if sent:
                    await asyncio.sleep(3600)
                sent = True
                return {"type": "http.request", "body": body or b"", "more_body": False}

            async def send(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    statuses.append(message["status"])

            await app(scope_of(method, path, body), receive, send)

    await asyncio.gather(*(client(requests // clients) for _ in range(clients)))
    return statuses


def measure(app: Any, name: str, method: str, path: str, body: bytes | None, requests: int,
            clients: int) -> float:
    runner = asyncio.Runner(loop_factory=_loop_factory())
    with runner:
        runner.run(drive(app, method, path, body, max(clients, requests // 10), clients))
        cpu, wall = time.process_time(), time.perf_counter()
        statuses = runner.run(drive(app, method, path, body, requests, clients))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    assert set(statuses) <= {200, 201}, (name, set(statuses))
    per = 1e6 * cpu / len(statuses)
    print(f"  {name:<16} {len(statuses):>7,} requests  {per:8.1f} us CPU/request  "
          f"({1e6 * wall / len(statuses):.1f} us wall)", flush=True)
    return per


def _loop_factory() -> Any:
    try:
        import uvloop

        return uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        return asyncio.new_event_loop


def serve(port: int, live: bool, folder: Path) -> None:
    """``--serve``: one application with stubbed services under uvicorn, until killed."""
    import uvicorn

    stub_services()
    engine = make_engine(f"sqlite:///{folder / 'unused.db'}")
    try:
        app = create_app(engine, live_routes=live)  # type: ignore[call-arg]
    except TypeError:
        app = create_app(engine)
    settings: dict[str, Any] = {"http": "httptools", "loop": "uvloop", "log_level": "info",
                                "access_log": False, "log_config": None}
    try:
        from setia.entrypoints import server as setia_server

        settings = dict(getattr(setia_server, "UVICORN", settings))
        from setia.entrypoints.api.app import freeze_startup_heap  # type: ignore[attr-defined]

        freeze_startup_heap()
    except ImportError:
        pass
    uvicorn.run(app, host="127.0.0.1", port=port, **settings)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _client(request: tuple[int, str, str, bytes | None, dict[str, str]], counts: list[int],
            index: int, bad: list[int], stop: threading.Event) -> None:
    """One keep-alive client sending the same request back to back until ``stop``."""
    port, method, path, body, headers = request
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    while not stop.is_set():
        conn.request(method, path, body=body, headers=headers)
        answer = conn.getresponse()
        answer.read()
        if answer.status not in (200, 201):
            bad.append(answer.status)
        counts[index] += 1
    conn.close()


def over_http(name: str, live: bool, cases: list[tuple[str, str, str, bytes | None, int]],
              clients: int, seconds: float, folder: Path) -> dict[str, float]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    log = open(folder / f"server-{port}.log", "w")  # noqa: SIM115 - the server's stderr
    process = subprocess.Popen([sys.executable, __file__, "--serve", str(port),
                                *([] if live else ["--no-live"])],
                               stdout=log, stderr=log, env=os.environ.copy())
    found: dict[str, float] = {}
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise SystemExit(f"the {name} server did not start; see {log.name}") \
                        from None
                time.sleep(0.2)
        for label, method, path, body, _ in cases:
            headers = {"Authorization": f"Bearer {KEY}"}
            if body is not None:
                headers["Content-Type"] = "application/json"
            counts = [0] * clients
            bad: list[int] = []
            stop = threading.Event()
            request = (port, method, path, body, headers)
            threads = [threading.Thread(target=_client, args=(request, counts, i, bad, stop))
                       for i in range(clients)]
            for thread in threads:
                thread.start()
            time.sleep(min(1.0, seconds / 5))  # warm up
            first, cpu = sum(counts), _cpu_seconds(process.pid)
            started = time.perf_counter()
            time.sleep(seconds)
            done, cpu = sum(counts) - first, _cpu_seconds(process.pid) - cpu
            wall = time.perf_counter() - started
            stop.set()
            for thread in threads:
                thread.join()
            assert not bad, (name, label, set(bad))
            found[label] = 1e6 * cpu / done
            print(f"  {label:<28} {name:<16} {done / wall:8,.0f} requests/s  "
                  f"{found[label]:8.1f} us server CPU/request", flush=True)
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--over-http", action="store_true",
                        help="serve each application with uvicorn and load it over loopback")
    parser.add_argument("--seconds", type=float, default=5.0, help="per case, --over-http")
    parser.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--no-live", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ["SETIA_ADMIN_KEY"] = KEY
    os.environ.setdefault("SETIA_RATE_LIMIT_PER_IP", "1000000/second")
    os.environ.setdefault("SETIA_RATE_LIMIT_PER_KEY", "1000000/second")
    if args.serve is not None:
        configure_logging()
        serve(args.serve, not args.no_live, Path(tempfile.mkdtemp(prefix="setia-http-bench-")))
        return 0
    configure_logging()
    sink = open(os.devnull, "w")  # noqa: SIM115 - open for the whole run
    for handler in logging.getLogger().handlers:
        handler.setStream(sink)  # type: ignore[attr-defined]
    stub_services()
    print(f"python {sys.version.split()[0]}, load average {os.getloadavg()[0]:.2f}; "
          f"{args.requests:,} requests per case from {args.clients} concurrent clients")
    folder = Path(tempfile.mkdtemp(prefix="setia-http-bench-"))
    engine = make_engine(f"sqlite:///{folder / 'unused.db'}")
    try:
        apps = {"FastAPI routes": create_app(engine, live_routes=False),  # type: ignore[call-arg]
                "live routes": create_app(engine)}
    except TypeError:  # code from before the live routes: its FastAPI routes only
        apps = {"FastAPI routes": create_app(engine)}
    one = json.dumps(EVENT).encode()
    many = json.dumps({"events": [dict(EVENT, id=f"e-{i}") for i in range(args.batch_size)]}
                      ).encode()
    cases = [("POST /events", "POST", f"/v1/programs/{PROGRAM}/events", one, args.requests),
             ("GET /members/{id}", "GET", f"/v1/programs/{PROGRAM}/members/m00001", None,
              args.requests),
             (f"POST /events/batch ({args.batch_size})", "POST",
              f"/v1/programs/{PROGRAM}/events/batch", many, max(32, args.requests // 200))]
    if args.over_http:
        found_http = {}
        for name, live in (("FastAPI routes", False), ("live routes", True)):
            if live and len(apps) == 1:
                continue
            found_http[name] = over_http(name, live, cases, args.clients, args.seconds, folder)
        if len(found_http) == 2:
            for label, *_ in cases:
                ratio = found_http["live routes"][label] / found_http["FastAPI routes"][label]
                print(f"  {label:<28} ratio live / FastAPI: {ratio:.2f}")
        engine.dispose()
        return 0
    for label, method, path, body, requests in cases:
        print(label)
        found = {name: measure(app, name, method, path, body, requests,
                               min(args.clients, requests)) for name, app in apps.items()}
        if len(found) == 2:
            print(f"  ratio live / FastAPI: "
                  f"{found['live routes'] / found['FastAPI routes']:.2f}")
    engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
