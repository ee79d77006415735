"""Monthly partitions of postings and events on PostgreSQL (migration 0003g)."""

from __future__ import annotations

import threading
from datetime import date
from typing import Any

import pytest
import sqlalchemy as sa

from setia.adapters.db import partitions
from setia.domain.errors import IdempotencyConflict
from setia.service.batch import ingest_batch
from setia.service.events import ingest_event
from setia.service.members import upsert_member
from tests.conftest import KOPI_SETIA, assert_journal_ok, fixed_clock, load_programme

pytestmark = pytest.mark.postgres
P = "kopi-setia"
CLOCK = fixed_clock("2031-05-01T09:00:00+08:00")


def purchase(event_id: str, member: str, when: str) -> dict[str, Any]:
    return {"id": event_id, "type": "purchase", "member": member, "order_id": f"o-{event_id}",
            "occurred_at": when, "amount": "10.00", "currency": "MYR", "store": "kl-01"}


def where(engine: sa.Engine, table: str, column: str, value: str) -> list[str]:
    with engine.connect() as conn:
        return sorted(conn.execute(sa.text(
            f"SELECT DISTINCT tableoid::regclass::text FROM {table} WHERE {column} = :v"),
            {"v": value}).scalars())


def test_both_tables_are_partitioned_by_month(pg_engine):
    with pg_engine.connect() as conn:
        for table in ("postings", "events"):
            assert partitions.is_partitioned(conn, table)
            assert partitions.existing_months(conn, "postings")  # months made by the migration
        key = conn.execute(sa.text(
            "SELECT pg_get_partkeydef('postings'::regclass)")).scalar_one()
    assert key == "RANGE (occurred_at)"


def test_a_month_without_a_partition_lands_in_default_and_moves_when_it_is_made(pg_engine):
    # Given an event of May 2031, a month the migration did not make
    load_programme(pg_engine, KOPI_SETIA)
    upsert_member(pg_engine, P, "cust-1", {}, CLOCK)
    first = ingest_event(pg_engine, P, purchase("e1", "cust-1", "2031-05-02T10:00:00+08:00"),
                         CLOCK)
    assert where(pg_engine, "postings", "ref", "e1") == ["postings_default"]
    assert where(pg_engine, "events", "id", "e1") == ["events_default"]

    # When the month is made
    with pg_engine.begin() as conn:
        report = partitions.ensure_months(conn, date(2031, 5, 1), date(2031, 5, 1))

    # Then its rows move across: the signup (1 posting, 1 event) and e1 (2 postings, 1 event)
    assert report.created == ["postings_2031_05", "events_2031_05"]
    assert report.moved_rows == 3 + 2
    assert where(pg_engine, "postings", "ref", "e1") == ["postings_2031_05"]
    assert where(pg_engine, "events", "id", "e1") == ["events_2031_05"]
    # and the moved event is still known: a resend replays, another body conflicts
    again = ingest_event(pg_engine, P, purchase("e1", "cust-1", "2031-05-02T10:00:00+08:00"),
                         CLOCK)
    assert again["status"] == "replayed" and again["points"] == first["points"]
    with pytest.raises(IdempotencyConflict):
        ingest_event(pg_engine, P, purchase("e1", "cust-1", "2031-06-02T10:00:00+08:00"), CLOCK)
    assert_journal_ok(pg_engine)


def test_an_event_id_stays_unique_across_months_under_concurrent_use(pg_engine):
    # Two tills send the same event id for different members in different months at once:
    # the partitioned events table cannot enforce that alone; event_ids does.
    load_programme(pg_engine, KOPI_SETIA)
    for member in ("cust-a", "cust-b"):
        upsert_member(pg_engine, P, member, {}, CLOCK)
    for round_number in range(5):
        event_id = f"shared-{round_number}"
        bodies = [purchase(event_id, "cust-a", "2031-05-02T10:00:00+08:00"),
                  purchase(event_id, "cust-b", "2031-08-02T10:00:00+08:00")]
        outcomes: list[str] = []
        barrier = threading.Barrier(2)

        def send(body: dict[str, Any], barrier: threading.Barrier = barrier,
                 outcomes: list[str] = outcomes) -> None:
            barrier.wait()
            try:
                outcomes.append(ingest_event(pg_engine, P, body, CLOCK)["status"])
            except IdempotencyConflict:
                outcomes.append("conflict")

        threads = [threading.Thread(target=send, args=(body,)) for body in bodies]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert sorted(outcomes) == ["applied", "conflict"]
    with pg_engine.connect() as conn:
        assert conn.execute(sa.text(
            "SELECT count(*) FROM events WHERE id LIKE 'shared-%'")).scalar_one() == 5
    assert_journal_ok(pg_engine)


def test_a_batch_registers_every_event_id_once_per_statement(pg_engine):
    # Migration 0003h: ids are registered by one statement trigger (a transition table),
    # also when the flush writes the events by COPY (a batch of at least 64 rows).
    with pg_engine.connect() as conn:
        triggers = conn.execute(sa.text(
            "SELECT tgname, (tgtype & 1) = 1 AS per_row FROM pg_trigger "
            "WHERE tgrelid = 'events'::regclass AND NOT tgisinternal")).all()
    assert [tuple(row) for row in triggers] == [("events_register_ids", False)]
    load_programme(pg_engine, KOPI_SETIA)
    upsert_member(pg_engine, P, "cust-1", {}, CLOCK)
    batch = [purchase(f"b{n}", "cust-1", "2031-05-02T10:00:00+08:00") for n in range(80)]
    outcomes = ingest_batch(pg_engine, P, batch, CLOCK)
    assert [outcome["status"] for outcome in outcomes] == ["applied"] * 80
    with pg_engine.connect() as conn:
        registered = conn.execute(sa.text(
            "SELECT count(*), count(DISTINCT id) FROM event_ids "
            "WHERE program_id = :p AND id LIKE 'b%'"), {"p": P}).one()
    assert tuple(registered) == (80, 80)
    # the same id in another month is still refused: event_ids holds it
    with pytest.raises(IdempotencyConflict):
        ingest_event(pg_engine, P, purchase("b7", "cust-1", "2031-08-02T10:00:00+08:00"), CLOCK)
    assert ingest_batch(pg_engine, P, batch[:3], CLOCK)[0]["status"] == "replayed"
    assert_journal_ok(pg_engine)
