"""Failures under load, each in CI: the server killed with SIGKILL mid-load and
restarted (everything resent: each event applied once, ``setia check`` clean), and the
database restarted mid-load (503 with Retry-After, then success on retry, nothing lost).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from setia.adapters.db.engine import make_engine
from setia.adapters.db.migrate import upgrade
from tests.e2e.api_server import (
    ADMIN_KEY,
    CAFE_PROGRAMME,
    assert_setia_check_ok,
    database_url,
    live_server,
)
from tests.e2e.throwaway_pg import throwaway_postgres

pytestmark = pytest.mark.postgres
CAFE = CAFE_PROGRAMME["id"]
MEMBERS = 10
EVENTS = 120


def event(i: int) -> dict[str, Any]:
    """Event i: RM (10 + i % 7).00 for member m-(i % 10); base rate 1, and the member's
    first purchase also earns first-visit 100 (no weekend, store or channel bonus)."""
    return {"id": f"load-{i}", "type": "purchase", "member": f"m-{i % MEMBERS}",
            "occurred_at": "2027-03-02T10:00:00+08:00", "order_id": f"ord-{i}",
            "amount": f"{10 + i % 7}.00"}


def expected_points(i: int) -> int:
    return 10 + i % 7 + (100 if i < MEMBERS else 0)


def set_up(base_url: str) -> None:
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                      timeout=30) as admin:
        assert admin.put(f"/v1/programs/{CAFE}", json=CAFE_PROGRAMME).status_code == 201
        for m in range(MEMBERS):
            assert admin.put(f"/v1/programs/{CAFE}/members/m-{m}", json={}).status_code == 201


def journal_per_event(db_url: str) -> dict[str, int]:
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            return {ref: int(points) for ref, points in conn.execute(sa.text(
                "SELECT ref, sum(points) FROM postings WHERE code = 'earn' AND ref LIKE 'load-%' "
                "GROUP BY ref"))}
    finally:
        engine.dispose()


def send_until_done(url: Callable[[], str], payload: dict[str, Any], seen: dict[str, int],
                    lock: threading.Lock, bound_seconds: float = 90) -> dict[str, Any]:
    """POST until a 200/201; 503s must carry Retry-After; lost connections are retried."""
    deadline = time.monotonic() + bound_seconds
    while time.monotonic() < deadline:
        try:
            response = httpx.post(f"{url()}/v1/programs/{CAFE}/events", json=payload,
                                  headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30)
        except httpx.TransportError:
            with lock:
                seen["transport"] = seen.get("transport", 0) + 1
            time.sleep(0.2)
            continue
        with lock:
            seen[str(response.status_code)] = seen.get(str(response.status_code), 0) + 1
        if response.status_code in (200, 201):
            return response.json()  # type: ignore[no-any-return]
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "1"
        assert response.headers["content-type"] == "application/problem+json"
        time.sleep(float(response.headers["retry-after"]))
    raise AssertionError(f"{payload['id']} never went through")


def test_a_server_killed_mid_load_and_restarted_applies_every_resent_event_once(tmp_path: Path):
    with database_url("postgres", tmp_path, "setia_kill") as db_url:
        with live_server(db_url, tmp_path) as first:
            set_up(first.base_url)
            answered: list[int] = []
            lock = threading.Lock()

            def fire(i: int) -> None:
                try:
                    r = httpx.post(f"{first.base_url}/v1/programs/{CAFE}/events",
                                   json=event(i), timeout=30,
                                   headers={"Authorization": f"Bearer {ADMIN_KEY}"})
                except httpx.TransportError:
                    return  # the server died under this request
                if r.status_code == 201:
                    with lock:
                        answered.append(i)
                        if len(answered) == EVENTS // 3:
                            first.process.send_signal(signal.SIGKILL)

            with ThreadPoolExecutor(8) as pool:
                list(pool.map(fire, range(EVENTS)))
            first.process.wait(timeout=30)
            assert first.process.returncode == -signal.SIGKILL
        applied_before = journal_per_event(db_url)
        assert EVENTS // 3 <= len(applied_before) < EVENTS
        # When the server is back and every event is sent again
        with live_server(db_url, tmp_path) as second:
            seen: dict[str, int] = {}
            lock = threading.Lock()
            with ThreadPoolExecutor(8) as pool:
                results = list(pool.map(
                    lambda i: send_until_done(lambda: second.base_url, event(i), seen, lock),
                    range(EVENTS)))
        # Then the ones applied before the kill replay, the rest apply, each once
        assert sorted(r["event"] for r in results if r["status"] == "replayed") == sorted(
            applied_before)
        assert [r["points"] for r in results] == [expected_points(i) for i in range(EVENTS)]
        assert journal_per_event(db_url) == {f"load-{i}": expected_points(i)
                                             for i in range(EVENTS)}
        assert_setia_check_ok(db_url)


def test_a_database_restart_mid_load_answers_503_with_retry_after_and_loses_nothing(
        tmp_path: Path):
    with throwaway_postgres() as cluster:
        admin = sa.create_engine(cluster.url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text('CREATE DATABASE "setia"'))
        admin.dispose()
        db_url = cluster.url.rsplit("/", 1)[0] + "/setia"
        engine = make_engine(db_url)
        upgrade(engine)
        engine.dispose()
        with live_server(db_url, tmp_path) as server:
            set_up(server.base_url)
            seen: dict[str, int] = {}
            lock = threading.Lock()
            done: list[dict[str, Any]] = []

            def fire(i: int) -> None:
                result = send_until_done(lambda: server.base_url, event(i), seen, lock)
                with lock:
                    done.append(result)

            with ThreadPoolExecutor(6) as pool:
                futures = [pool.submit(fire, i) for i in range(EVENTS)]
                while True:  # wait (bounded) for a third of the load, then stop the database
                    with lock:
                        if len(done) >= EVENTS // 3:
                            break
                    assert not all(f.done() for f in futures)
                    time.sleep(0.05)
                cluster.stop("fast")
                # While it is down, a request is answered 503 with Retry-After
                down = httpx.post(f"{server.base_url}/v1/programs/{CAFE}/events",
                                  json=event(10_000), timeout=30,
                                  headers={"Authorization": f"Bearer {ADMIN_KEY}"})
                time.sleep(1.0)  # the load keeps coming while the database is away
                cluster.start()
                for future in futures:
                    future.result(timeout=120)
            ready = httpx.get(f"{server.base_url}/ready", timeout=10)
        assert down.status_code == 503 and down.headers["retry-after"] == "1"
        assert down.json()["type"] == "https://setia.dev/problems/database-unavailable"
        assert ready.status_code == 200
        assert seen.get("503", 0) >= 1
        assert set(seen) <= {"200", "201", "503", "transport"}
        assert sorted(r["points"] for r in done) == sorted(expected_points(i)
                                                           for i in range(EVENTS))
        assert journal_per_event(db_url) == {f"load-{i}": expected_points(i)
                                             for i in range(EVENTS)}
        assert_setia_check_ok(db_url)
