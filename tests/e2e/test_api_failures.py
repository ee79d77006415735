"""End to end: the problem types that only a failing database produces, over HTTP.

- ``busy``: another writer holds SQLite's write lock longer than the server's busy
  timeout, every bounded retry fails, and the server answers 503 with Retry-After;
  once the lock is gone the same event applies, once.
- ``internal-error``: a table the server needs has gone (renamed away behind its
  back); the answer is a 500 problem with no stack trace, SQL or table name in it,
  and the server works again when the table is back.
- ``not-ready``: the PostgreSQL database refuses connections; ``/ready`` answers
  503 with Retry-After while ``/health`` (liveness) still answers 200, and ``/ready``
  recovers when connections are allowed again.

Each ends with ``setia check`` on the database.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.e2e.api_server import (
    CAFE_PROGRAMME,
    assert_problem,
    assert_setia_check_ok,
    database_url,
    live_server,
)

CAFE = CAFE_PROGRAMME["id"]
API = f"/v1/programs/{CAFE}"


def purchase(event_id: str, member: str, order_id: str, amount: str) -> dict[str, str]:
    return {"id": event_id, "type": "purchase", "member": member, "order_id": order_id,
            "occurred_at": "2021-03-01T10:00:00+08:00", "amount": amount}


def test_a_write_lock_held_past_every_retry_answers_busy_then_the_event_applies(tmp_path: Path):
    with database_url("sqlite", tmp_path) as url, \
            live_server(url, tmp_path, env={"SETIA_SQLITE_BUSY_TIMEOUT_MS": "50"}) as server, \
            server.client(server.admin_key) as client:
        assert client.put(API, json=CAFE_PROGRAMME).status_code == 201
        assert client.put(f"{API}/members/ana", json={"name": "Ana"}).status_code == 201
        before = client.get(f"{API}/members/ana").json()["balances"]
        postings = server.postings()
        # Given another process holding SQLite's write lock
        holder = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")
            # When an event arrives, every attempt finds the database locked
            response = client.post(f"{API}/events", json=purchase("busy-1", "ana", "o-1", "12.00"))
            problem = assert_problem(response, 503, "busy")
            assert response.headers["retry-after"] == "1"
            assert problem["detail"] == "the database stayed busy; retry shortly"
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        # Then nothing changed, and the same event sent again applies once
        assert client.get(f"{API}/members/ana").json()["balances"] == before
        assert server.postings() == postings
        retried = client.post(f"{API}/events", json=purchase("busy-1", "ana", "o-1", "12.00"))
        assert retried.status_code == 201, retried.text
        # base 12 + first-visit 100 (RM 12.00 >= RM 10.00); welcome 50 was already there
        assert retried.json()["points"] == 112
        assert retried.json()["balances"] == {"available": before["available"] + 112,
                                              "pending": 0, "reserved": 0}
        again = client.post(f"{API}/events", json=purchase("busy-1", "ana", "o-1", "12.00"))
        assert again.status_code == 200 and again.json()["status"] == "replayed"
    assert_setia_check_ok(url)


def test_an_unexpected_database_failure_answers_internal_error_without_details(tmp_path: Path):
    with database_url("sqlite", tmp_path) as url, live_server(url, tmp_path) as server, \
            server.client(server.admin_key) as client:
        assert client.put(API, json=CAFE_PROGRAMME).status_code == 201
        assert client.put(f"{API}/members/ben", json={"name": "Ben"}).status_code == 201
        # Given the tier-bucket table gone from under the server
        with server.engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE metric_buckets RENAME TO metric_buckets_away"))
        try:
            response = client.get(f"{API}/members/ben")
            problem = assert_problem(response, 500, "internal-error")
            assert problem["detail"] == ("something went wrong on our side; "
                                         "the request changed nothing")
            for secret in ("metric_buckets", "SELECT", "sqlite", "OperationalError"):
                assert secret not in response.text
            # (the server's own log has the cause, for its operator)
            assert "metric_buckets" in server.log()
        finally:
            with server.engine.begin() as conn:
                conn.execute(sa.text("ALTER TABLE metric_buckets_away RENAME TO metric_buckets"))
        # Then with the table back, the same request works
        back = client.get(f"{API}/members/ben")
        assert back.status_code == 200
        assert back.json()["balances"] == {"available": 50, "pending": 0, "reserved": 0}
    assert_setia_check_ok(url)


@pytest.mark.postgres
def test_ready_answers_not_ready_while_the_database_refuses_connections(tmp_path: Path):
    with database_url("postgres", tmp_path) as url:
        _not_ready_then_ready(url, tmp_path)
        assert_setia_check_ok(url)


def _not_ready_then_ready(url: str, tmp_path: Path) -> None:
    with live_server(url, tmp_path) as server, server.client() as client:
        assert client.get("/ready").json() == {"status": "ready"}
        name = sa.make_url(url).database
        admin = sa.create_engine(sa.make_url(url).set(database="postgres"),
                                 isolation_level="AUTOCOMMIT")
        try:
            # Given the database closed to new connections and its sessions ended
            with admin.connect() as conn:
                conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
                conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                     "WHERE datname = :name"), {"name": name})
            # Then /ready says so, while the process itself is alive
            response = client.get("/ready")
            problem = assert_problem(response, 503, "not-ready")
            assert response.headers["retry-after"] == "5"
            assert problem["detail"] == "the database does not answer"
            assert client.get("/health").json() == {"status": "ok"}
        finally:
            with admin.connect() as conn:
                conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
            admin.dispose()
        # And once connections are allowed again, it is ready again
        assert client.get("/ready").json() == {"status": "ready"}
