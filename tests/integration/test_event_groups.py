"""Single events of several callers applied in one transaction (``batch.ingest_together``,
behind ``EventGroups`` in the API) answer and write exactly what the same events sent one by
one answer and write: each caller gets its own result or its own error.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import sqlalchemy as sa

from setia.domain.errors import IdempotencyConflict, InvalidAmount, SetiaError, UnknownProgramme
from setia.entrypoints.api.live import EventGroups, Threads, thread_runner
from setia.service import batch
from setia.service.batch import ingest_together
from setia.service.events import ingest_event
from setia.service.members import get_member
from setia.service.programmes import parse_text
from tests.conftest import KOPI_SETIA, assert_journal_ok, load_programme, wait_for_lock_waiters
from tests.integration.test_import_equivalence import CLOCK, events, journal, state

GROUP_SIZES = [1, 2, 5, 17, 1, 40, 3, 55]


def stream_with_mistakes() -> list[dict[str, Any]]:
    """Purchases and refunds of 12 members, with a malformed event, an event sent twice
    (a replay), an id sent again with another body (a conflict) and a refund of an order
    nobody bought, spread through it."""
    made = events(120, 12, seed=11)
    malformed = dict(made[4], id="bad-amount", order_id="o-bad", amount="lots")
    conflict = dict(made[30], amount="1.00", lines=[{"sku": "TEH", "category": "tea",
                                                     "quantity": 1, "amount": "1.00"}])
    stray = {"id": "stray", "type": "refund", "member": "m3", "order_id": "no-such-order",
             "occurred_at": made[60]["occurred_at"], "amount": "1.00"}
    return (made[:10] + [malformed] + made[10:40] + [made[31], conflict] + made[40:70]
            + [stray] + made[70:])


def outcome(call: Any) -> Any:
    """What a caller gets: the result, or the error's class and problem document."""
    if isinstance(call, SetiaError):
        return type(call).__name__, call.to_problem()
    return call


def alone(engine: sa.Engine, program_id: str, event: dict[str, Any]) -> Any:
    try:
        return ingest_event(engine, program_id, event, CLOCK)
    except SetiaError as exc:
        return exc


def two_programmes(engine: sa.Engine) -> None:
    for program_id in ("together", "alone"):
        document = parse_text(KOPI_SETIA.read_text())
        document.update(id=program_id, auto_enroll=True)
        load_programme(engine, document)


def test_events_applied_together_answer_and_write_what_they_would_one_by_one(engine):
    # Given Kopi Setia twice, and 124 events with four kinds of mistake among them
    two_programmes(engine)
    stream = stream_with_mistakes()

    # When one takes them in groups of 1 to 55 and the other one at a time
    together: list[Any] = []
    start = 0
    for size in GROUP_SIZES:
        together += ingest_together(engine, "together", stream[start:start + size], CLOCK)
        start += size
    assert start == len(stream) == 124
    one_by_one = [alone(engine, "alone", event) for event in stream]

    # Then every caller got the same answer either way, mistakes included
    assert [outcome(call) for call in together] == [outcome(call) for call in one_by_one]
    kinds = [type(call).__name__ for call in together]
    assert kinds.count("dict") == 121
    assert [kind for kind in kinds if kind != "dict"] == [
        "InvalidAmount", "IdempotencyConflict", "UnknownOrder"]
    statuses = [call["status"] for call in together if isinstance(call, dict)]
    assert statuses.count("replayed") == 1 and statuses.count("applied") == 120
    # and the journal, lots, orders, members, events and outbox are the same
    assert journal(engine, "together") == journal(engine, "alone")
    assert state(engine, "together") == state(engine, "alone")
    assert_journal_ok(engine)


def test_a_group_whose_transaction_fails_answers_each_event_alone(engine):
    # Given three events for a programme that does not exist
    stream = events(3, 2, seed=3)

    # When they are applied together
    answers = ingest_together(engine, "nope", stream, CLOCK)

    # Then each caller gets its own error, as ingest_event raises it alone
    assert [type(answer) for answer in answers] == [UnknownProgramme] * 3
    assert len({id(answer) for answer in answers}) == 3
    assert answers[0].to_problem()["detail"] == "no programme 'nope'; store one first"
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM events")).scalar_one() == 0
        assert conn.execute(sa.text("SELECT count(*) FROM postings")).scalar_one() == 0
    assert_journal_ok(engine)


def test_requests_that_wait_while_a_group_is_applied_go_together(engine):
    # Given the API's groups on a real thread, counting the groups they apply
    two_programmes(engine)
    stream = [event for event in events(23, 4, seed=5) if event["type"] == "purchase"][:20]
    stream[7] = dict(stream[7], amount="-3.00")
    threads = Threads(2, "test-groups")
    run = thread_runner(threads)
    sizes: list[int] = []

    def counting(fn: Any, *args: Any) -> Any:
        if fn is batch.ingest_together:
            sizes.append(len(args[2]))
        return run(fn, *args)

    groups = EventGroups(counting, engine)
    groups.MOST = 10

    async def send_all() -> list[Any]:
        return await asyncio.gather(*(groups.ingest("together", event) for event in stream),
                                    return_exceptions=True)

    # When 20 requests arrive at once
    try:
        answers = asyncio.run(send_all())
    finally:
        threads.shutdown()

    # Then the first found the lane free and went alone; the others waited and went in
    # groups of at most 10, in the order they came
    assert sizes == [1, 10, 9]
    # and each got its own answer: the refused one its error, the others their results
    assert isinstance(answers[7], InvalidAmount)
    assert answers[7].field == "amount"
    applied = [answer for answer in answers if isinstance(answer, dict)]
    assert len(applied) == 19 and {answer["status"] for answer in applied} == {"applied"}
    assert [answer["event"] for answer in applied] == [
        event["id"] for number, event in enumerate(stream) if number != 7]
    # as one by one would have answered them
    one_by_one = [alone(engine, "alone", event) for event in stream]
    assert [outcome(answer) for answer in answers] == [outcome(call) for call in one_by_one]
    assert state(engine, "together") == state(engine, "alone")
    members = {event["member"] for event in stream}
    assert all(get_member(engine, "together", member, CLOCK)["balances"]
               == get_member(engine, "alone", member, CLOCK)["balances"] for member in members)
    assert_journal_ok(engine)


def test_a_conflicting_replay_in_a_group_is_refused_alone(engine):
    # Given one purchase, sent together with a replay and a conflicting reuse of its id
    two_programmes(engine)
    first = events(1, 1, seed=9)[0]
    changed = dict(first, amount="2.00", lines=[{"sku": "TEH", "category": "tea",
                                                  "quantity": 1, "amount": "2.00"}])
    answers = ingest_together(engine, "together", [first, first, changed], CLOCK)

    # Then the first applies, the second replays it, the third alone is refused
    assert [answer["status"] for answer in answers[:2]] == ["applied", "replayed"]
    assert answers[1]["points"] == answers[0]["points"] > 0
    assert isinstance(answers[2], IdempotencyConflict)
    assert answers[2].field == "id"
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT payload FROM events WHERE program_id = "
                                      "'together' AND type = 'purchase'")).scalars().all()
    assert [json.loads(value) if isinstance(value, str) else value
            for value in stored] == [first]
    assert_journal_ok(engine)


def test_a_refused_event_of_a_group_leaves_nothing_behind(engine):
    # Given Kopi Setia with auto-enrolment twice, and a group in which a member nobody has
    # seen sends a refund of an order that does not exist: alone, the refusal rolls back
    # the enrolment its event would have made
    two_programmes(engine)
    bought, later = [event for event in events(6, 2, seed=13) if event["type"] == "purchase"][:2]
    stray = {"id": "stray", "type": "refund", "member": "newbie", "order_id": "no-such-order",
             "occurred_at": bought["occurred_at"], "amount": "1.00"}
    stream = [bought, stray, later]

    # When it is applied together, and the same events one by one
    together = ingest_together(engine, "together", stream, CLOCK)
    one_by_one = [alone(engine, "alone", event) for event in stream]

    # Then the answers are the same, the refund refused in both
    assert [outcome(call) for call in together] == [outcome(call) for call in one_by_one]
    assert [type(call).__name__ for call in together] == ["dict", "UnknownOrder", "dict"]
    # and no member "newbie", no signup and no outbox row of hers was left by the group
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM members WHERE id = 'newbie'")
                            ).scalar_one() == 0
        assert conn.execute(sa.text("SELECT count(*) FROM events WHERE id = 'signup:newbie'")
                            ).scalar_one() == 0
    assert state(engine, "together") == state(engine, "alone")
    assert_journal_ok(engine)


@pytest.mark.postgres
def test_a_group_waiting_for_a_members_lock_does_not_hold_up_other_members(pg_engine):
    # Given two members with a purchase each, one of them locked by another transaction
    # (an import's batch, say)
    two_programmes(pg_engine)
    template = next(event for event in events(4, 1, seed=21) if event["type"] == "purchase")
    first_a, first_b, then_a, then_b = [
        dict(template, id=f"p-{n}", order_id=f"o-{n}", member=member)
        for n, member in enumerate(["m-a", "m-b", "m-a", "m-b"])]
    for event in (first_a, first_b):
        ingest_event(pg_engine, "together", event, CLOCK)
    threads = Threads(4, "test-stall")
    groups = EventGroups(thread_runner(threads), pg_engine)
    groups.STALL = 0.05

    async def scenario(gate: sa.Connection) -> tuple[Any, Any, bool]:
        # When the locked member's purchase takes the lane and waits for the lock (its
        # session seen blocked on it; the event loop runs meanwhile)
        waiting = asyncio.ensure_future(groups.ingest("together", then_a))
        assert await asyncio.to_thread(wait_for_lock_waiters, pg_engine, 1,
                                       statement_like="%members%", seconds=10) == 1
        # then the other member's purchase comes: answered while the lock is still held
        other = await asyncio.wait_for(groups.ingest("together", then_b), timeout=5)
        still_waiting = not waiting.done()
        gate.commit()
        return await asyncio.wait_for(waiting, timeout=10), other, still_waiting

    try:
        with pg_engine.connect() as gate:
            gate.execute(sa.text("SELECT 1 FROM members WHERE program_id = 'together' "
                                 "AND id = :m FOR UPDATE"), {"m": then_a["member"]})
            locked, other, still_waiting = asyncio.run(scenario(gate))
    finally:
        threads.shutdown()

    # Then the other member's purchase did not wait for the lock, and both applied
    assert still_waiting
    assert (locked["status"], other["status"]) == ("applied", "applied")
    assert (locked["event"], other["event"]) == (then_a["id"], then_b["id"])
    assert_journal_ok(pg_engine)
