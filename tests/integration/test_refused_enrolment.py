"""An event refused changes nothing, in a batch and an import as alone: a member nobody has
seen is enrolled only once their event has passed every refusal it could meet, so a batch
that goes on after the refused event does not keep its enrolment (its member row, signup
posting, signup event and outbox rows)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from setia.domain.errors import SetiaError
from setia.service.batch import ingest_batch
from setia.service.events import ingest_event
from setia.service.importer import import_events
from setia.service.programmes import parse_text
from tests.conftest import KOPI_SETIA, assert_journal_ok, load_programme
from tests.integration.test_import_equivalence import CLOCK, journal, state

LINE = [{"sku": "LATTE", "category": "coffee", "quantity": 1, "amount": "9.50"}]


def purchase(event_id: str, member: str, order_id: str, when: str = "2027-05-10T09:00:00+08:00",
             **more: Any) -> dict[str, Any]:
    return {"id": event_id, "type": "purchase", "member": member, "order_id": order_id,
            "occurred_at": when, "amount": "9.50", "lines": LINE, **more}


# A regular's purchase, then one event from each of six members nobody has seen: five
# are refused, each for another reason, and the last applies.
STREAM = [
    purchase("p-regular", "regular", "o1"),
    purchase("p-partner", "n-partner", "o2", partner="no-such-shop"),
    purchase("p-old", "n-old", "o3", when="2026-12-01T09:00:00+08:00"),
    purchase("p-order", "n-order", "o1"),
    {"id": "r-refund", "type": "refund", "member": "n-refund", "order_id": "o1",
     "occurred_at": "2027-05-11T09:00:00+08:00", "amount": "9.50"},
    # two faults: the member id's is named first, as before this event's enrolment moved
    purchase("p-badid", "bad id!", "o4", partner="no-such-shop"),
    purchase("p-good", "n-good", "o5"),
]
REFUSED = ["UnknownPartner", "EventTooOld", "InvalidField", "UnknownOrder", "InvalidField"]
FIELDS = ["partner", "occurred_at", "order_id", "order_id", "member"]


def programmes(engine: sa.Engine, *program_ids: str) -> None:
    for program_id in program_ids:
        document = parse_text(KOPI_SETIA.read_text())
        document.update(id=program_id, auto_enroll=True,
                        privacy={"event_retention_months": 3})
        load_programme(engine, document)


def one_by_one(engine: sa.Engine, program_id: str) -> list[Any]:
    answers: list[Any] = []
    for event in STREAM:
        try:
            answers.append(ingest_event(engine, program_id, event, CLOCK))
        except SetiaError as exc:
            answers.append(exc)
    return answers


def members_and_signups(engine: sa.Engine, program_id: str) -> tuple[list[str], list[str]]:
    with engine.connect() as conn:
        members = conn.execute(sa.text("SELECT id FROM members WHERE program_id = :p "
                                       "ORDER BY id"), {"p": program_id}).scalars().all()
        signups = conn.execute(sa.text("SELECT id FROM events WHERE program_id = :p AND "
                                       "type = 'signup' ORDER BY id"), {"p": program_id}
                               ).scalars().all()
    return list(members), list(signups)


def test_events_refused_in_a_batch_leave_no_enrolment(engine):
    # Given Kopi Setia with auto-enrolment and events kept 3 months, twice
    programmes(engine, "batch", "alone")

    # When the stream goes as one batch to one, and one event at a time to the other
    results = ingest_batch(engine, "batch", STREAM, CLOCK)
    alone = one_by_one(engine, "alone")

    # Then each of the five is refused in the batch as it is alone, with the same reason
    refused = [result for result in results if result["status"] == "rejected"]
    assert [result["event"] for result in refused] == [e["id"] for e in STREAM[1:6]]
    assert [type(answer).__name__ for answer in alone[1:6]] == REFUSED
    assert [answer.field for answer in alone[1:6]] == FIELDS
    for index, (result, answer) in enumerate(zip(results[1:6], alone[1:6], strict=True),
                                             start=1):
        assert result["problem"]["type"] == answer.to_problem()["type"]
        assert result["problem"]["detail"] == answer.to_problem()["detail"].replace(
            "programme alone", "programme batch")
        assert result["problem"]["field"] == f"events[{index}].{answer.field}"
    assert [results[0]["points"], results[6]["points"]] == [alone[0]["points"],
                                                            alone[6]["points"]] == [9, 9]
    # and only the regular and the last newcomer were enrolled, in the batch as alone
    assert members_and_signups(engine, "batch") == members_and_signups(engine, "alone") == (
        ["n-good", "regular"], ["signup:n-good", "signup:regular"])
    assert state(engine, "batch") == state(engine, "alone")
    assert journal(engine, "batch") == journal(engine, "alone")
    assert_journal_ok(engine)


def test_events_refused_in_an_import_leave_no_enrolment(engine, tmp_path: Path):
    # Given the same two programmes, and the stream as an import file
    programmes(engine, "bulk", "alone")
    file = tmp_path / "events.jsonl"
    file.write_text("".join(json.dumps(event) + "\n" for event in STREAM))

    # When one imports it in one batch and the other takes one event at a time
    summary = import_events(engine, "bulk", file, batch_size=1000, clock=CLOCK)
    one_by_one(engine, "alone")

    # Then five were refused and two applied, and the import enrolled no one else
    assert (summary["applied"], summary["rejected"]) == (2, 5)
    assert members_and_signups(engine, "bulk") == (["n-good", "regular"],
                                                    ["signup:n-good", "signup:regular"])
    assert state(engine, "bulk") == state(engine, "alone")
    assert journal(engine, "bulk") == journal(engine, "alone")
    assert_journal_ok(engine)
