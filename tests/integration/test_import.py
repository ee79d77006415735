"""Bulk import: one unit of work per batch, idempotent by event id within and across batches."""

from __future__ import annotations

import json
from pathlib import Path

import sqlalchemy as sa

from setia.service.importer import import_events
from setia.service.members import get_member, upsert_member
from tests.conftest import assert_journal_ok, fixed_clock

CLOCK = fixed_clock("2027-02-01T09:00:00+08:00")


def purchase(event_id: str, order_id: str, amount: str) -> dict[str, str]:
    return {"id": event_id, "type": "purchase", "member": "ali", "order_id": order_id,
            "occurred_at": "2027-02-02T10:00:00+08:00", "amount": amount}


def write(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def journal_rows(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("select count(*) from postings")).scalar_one())


def test_a_repeated_event_in_one_batch_is_applied_once_and_a_changed_one_refused(kopi, tmp_path):
    # Given a member (50 pending welcome Beans) and a file where e1 appears three times:
    # once more unchanged, once with another amount
    upsert_member(kopi, "kopi-setia", "ali", {}, CLOCK)
    file = write(tmp_path / "events.jsonl", [
        purchase("e1", "o1", "5.00"), purchase("e1", "o1", "5.00"),
        purchase("e1", "o1", "9.00"), purchase("e2", "o2", "3.00"),
    ])
    # When it is imported as one batch
    summary = import_events(kopi, "kopi-setia", file, batch_size=10, clock=CLOCK)
    # Then e1 and e2 apply once (5 + 3 base Beans, no first-visit bonus under RM 10),
    # the repeat replays and the changed repeat is refused into the report
    assert (summary["applied"], summary["replayed"], summary["rejected"]) == (2, 1, 1)
    rejected = [json.loads(line) for line in Path(summary["report"]).read_text().splitlines()]
    assert [(r["row"], r["problem"]["type"].rsplit("/", 1)[1]) for r in rejected] == [
        (3, "idempotency-conflict")]
    assert get_member(kopi, "kopi-setia", "ali", CLOCK)["balances"] == {
        "available": 0, "pending": 50 + 5 + 3, "reserved": 0}
    rows = journal_rows(kopi)
    # And importing the file again changes nothing
    again = import_events(kopi, "kopi-setia", file, batch_size=2, clock=CLOCK)
    assert (again["applied"], again["replayed"], again["rejected"]) == (0, 3, 1)
    assert journal_rows(kopi) == rows
    assert_journal_ok(kopi)
