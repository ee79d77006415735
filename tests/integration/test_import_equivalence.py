"""A bulk import writes exactly what the same events sent one by one write.

The import flushes hundreds of rows per table at once (on PostgreSQL by COPY); the
live path flushes a few rows per event. Both must leave the same journal, lots, orders
and balances.
"""

from __future__ import annotations

import json
import random
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from setia.service.events import ingest_event
from setia.service.importer import import_events
from setia.service.programmes import parse_text
from tests.conftest import KOPI_SETIA, assert_journal_ok, fixed_clock, load_programme

CLOCK = fixed_clock("2027-06-01T09:00:00+08:00")
SKUS = [("LATTE", "coffee", "9.50"), ("TEH", "tea", "4.20"), ("KAYA", "food", "6.80"),
        ("CROISSANT", "pastry", "7.90"), ("MUG", "retail", "39.00")]


def events(count: int, members: int, seed: int) -> list[dict[str, Any]]:
    """Purchases of 1-3 lines over the first months of 2027, and refunds of some of them."""
    rng = random.Random(seed)
    made: list[dict[str, Any]] = []
    purchases: list[dict[str, Any]] = []
    for n in range(count):
        day, minute = 1 + n * 150 // count, rng.randrange(8 * 60, 21 * 60)
        when = f"2027-{1 + (day - 1) // 28:02d}-{1 + (day - 1) % 28:02d}T" \
               f"{minute // 60:02d}:{minute % 60:02d}:00+08:00"
        if purchases and rng.random() < 0.08:
            bought = purchases.pop(rng.randrange(len(purchases)))
            made.append({"id": f"r{n}", "type": "refund", "member": bought["member"],
                         "order_id": bought["order_id"], "occurred_at": when,
                         "amount": bought["lines"][0]["amount"]})
            continue
        lines = [{"sku": sku, "category": category, "quantity": 1, "amount": amount}
                 for sku, category, amount in rng.sample(SKUS, rng.randint(1, 3))]
        total = sum((Decimal(line["amount"]) for line in lines), Decimal(0))
        event = {"id": f"p{n}", "type": "purchase", "member": f"m{rng.randrange(members)}",
                 "order_id": f"o{n}", "occurred_at": when, "amount": str(total),
                 "store": rng.choice(["kl-01", "pj-02"]), "channel": rng.choice(["pos", "app"]),
                 "lines": lines}
        purchases.append(event)
        made.append(event)
    return made


def journal(engine: sa.Engine, program_id: str) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(sa.text(
            "SELECT m.id, p.asset, p.debit, p.credit, p.points, p.code, p.ref, p.rule_id, "
            "p.explanation, p.occurred_at, p.debit_balance_after, p.credit_balance_after "
            "FROM postings p LEFT JOIN members m ON m.pk = p.member_pk "
            "WHERE p.program_id = :program ORDER BY p.id"), {"program": program_id})]


def state(engine: sa.Engine, program_id: str) -> dict[str, Any]:
    with engine.connect() as conn:
        def rows(sql: str) -> list[tuple[Any, ...]]:
            return sorted(tuple(row) for row in conn.execute(sa.text(sql),
                                                              {"program": program_id}))
        return {
            "members": rows("SELECT id, tier_id, available, pending, reserved, lot_seq, "
                            "purchases FROM members WHERE program_id = :program"),
            "lots": rows("SELECT m.id, l.seq, l.source, l.order_id, l.points, l.remaining, "
                         "l.available_at, l.expires_at, l.pending FROM lots l JOIN members m "
                         "ON m.pk = l.member_pk WHERE l.program_id = :program"),
            # lines and awards as the text stored (refunds rewrite them: on PostgreSQL a
            # batch's order updates go as one statement over a JSON parameter)
            "orders": rows("SELECT order_id, event_id, tier_id, amount_e4, refunded_e4, "
                           "CAST(lines AS TEXT), CAST(awards AS TEXT) "
                           "FROM orders WHERE program_id = :program"),
            "events": rows("SELECT id, type, member_id, occurred_at, request_hash "
                           "FROM events WHERE program_id = :program"),
            "buckets": rows("SELECT m.id, b.month, b.spend_e4, b.points, b.visits "
                            "FROM metric_buckets b JOIN members m ON m.pk = b.member_pk "
                            "WHERE m.program_id = :program"),
            "usage": rows("SELECT m.id, u.rule_id, u.period, u.count FROM rule_usage u "
                          "JOIN members m ON m.pk = u.member_pk WHERE m.program_id = :program"),
            "outbox": sorted(_message(*row) for row in rows(
                "SELECT key, type, member_id, data FROM outbox WHERE program_id = :program")),
        }


def _message(key: str, kind: str, member_id: str, data: str) -> tuple[str, str, str, str]:
    """An outbox row as compared: without its programme, and with a voucher's random code
    (in its key and data) left out: a stamp card's vouchers are drawn anew each time."""
    fields = {k: v for k, v in json.loads(data).items() if k != "program"}
    if kind == "voucher.issued":
        key = key.replace(fields.pop("code"), "<code>")
    return key, kind, member_id, repr(fields)


def test_a_bulk_import_writes_what_the_same_events_one_by_one_write(engine, tmp_path: Path):
    # Given Kopi Setia twice, as "bulk" and as "live", with auto-enrolment
    for program_id in ("bulk", "live"):
        document = parse_text(KOPI_SETIA.read_text())
        document.update(id=program_id, auto_enroll=True)
        load_programme(engine, document)
    stream = events(400, 25, seed=7)
    file = tmp_path / "events.jsonl"
    file.write_text("".join(json.dumps(event) + "\n" for event in stream))
    # When one imports all 400 events in one batch and the other takes them one at a time
    summary = import_events(engine, "bulk", file, batch_size=1000, clock=CLOCK)
    for event in stream:
        assert ingest_event(engine, "live", event, CLOCK)["status"] == "applied"
    # Then every event applied, and journal, lots, orders, members and events are the same
    assert (summary["applied"], summary["rejected"]) == (400, 0)
    bulk, live = journal(engine, "bulk"), journal(engine, "live")
    assert len(bulk) > 800
    assert bulk == live
    written = state(engine, "bulk")
    assert written == state(engine, "live")
    # (every member has buckets, every event its outbox rows: the comparison covers them)
    assert len(written["buckets"]) >= 25 and len(written["outbox"]) >= 400
    assert sum(1 for order in written["orders"] if order[4] > 0) >= 16  # refunded orders
    assert_journal_ok(engine)
