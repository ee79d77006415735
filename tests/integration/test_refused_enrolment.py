"""An event refused changes nothing, in a batch and an import as alone: a member nobody has
seen is enrolled only once their event has passed every refusal it could meet, so a batch
that goes on after the refused event does not keep its enrolment (its member row, signup
posting, signup event and outbox rows)."""

from __future__ import annotations

import json
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import setia.service.common as common
from setia.adapters.db import tables as t
from setia.adapters.db.store import UnitOfWork
from setia.domain.errors import IdempotencyConflict, SetiaError
from setia.service.batch import ingest_batch, ingest_together
from setia.service.events import ingest_event
from setia.service.importer import import_events
from setia.service.members import get_member, upsert_member
from setia.service.privacy import erase_member, prune_events
from setia.service.programmes import parse_text
from tests.conftest import KOPI_SETIA, assert_journal_ok, fixed_clock, load_programme
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
    # two faults: a malformed member id is named first; too old and an unknown partner:
    # the partner, for a new member as for a known one
    purchase("p-badid", "bad id!", "o4", partner="no-such-shop"),
    purchase("p-old-partner", "n-old-partner", "o6", when="2026-12-01T09:00:00+08:00",
             partner="no-such-shop"),
    purchase("p-old-partner-known", "regular", "o7", when="2026-12-01T09:00:00+08:00",
             partner="no-such-shop"),
    purchase("p-good", "n-good", "o5"),
]
REFUSED = ["UnknownPartner", "EventTooOld", "InvalidField", "UnknownOrder", "InvalidField",
           "UnknownPartner", "UnknownPartner"]
FIELDS = ["partner", "occurred_at", "order_id", "order_id", "member", "partner", "partner"]
LAST = len(STREAM) - 1


def programmes(engine: sa.Engine, *program_ids: str) -> None:
    for program_id in program_ids:
        document = parse_text(KOPI_SETIA.read_text())
        document.update(id=program_id, auto_enroll=True,
                        privacy={"event_retention_months": 3})
        load_programme(engine, document)


def one_by_one(engine: sa.Engine, program_id: str) -> list[Any]:
    return one_by_one_of(engine, program_id, STREAM)


def one_by_one_of(engine: sa.Engine, program_id: str,
                  stream: list[dict[str, Any]]) -> list[Any]:
    answers: list[Any] = []
    for event in stream:
        try:
            answers.append(ingest_event(engine, program_id, event, CLOCK))
        except SetiaError as exc:
            answers.append(exc)
    return answers


def batch_and_alone(engine: sa.Engine, stream: list[dict[str, Any]]
                    ) -> tuple[list[dict[str, Any]], list[Any]]:
    """The stream applied as one batch to programme "batch", and one event at a time to
    programme "alone" (both Kopi Setia with auto-enrolment): the batch's results and the
    answers alone."""
    programmes(engine, "batch", "alone")
    return ingest_batch(engine, "batch", stream, CLOCK), one_by_one_of(engine, "alone", stream)


def assert_batch_wrote_as_alone(engine: sa.Engine) -> None:
    assert state(engine, "batch") == state(engine, "alone")
    assert journal(engine, "batch") == journal(engine, "alone")
    assert_journal_ok(engine)


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
    assert [result["event"] for result in refused] == [e["id"] for e in STREAM[1:LAST]]
    assert [type(answer).__name__ for answer in alone[1:LAST]] == REFUSED
    assert [answer.field for answer in alone[1:LAST]] == FIELDS
    for index, (result, answer) in enumerate(zip(results[1:LAST], alone[1:LAST], strict=True),
                                             start=1):
        assert result["problem"]["type"] == answer.to_problem()["type"]
        assert result["problem"]["detail"] == answer.to_problem()["detail"].replace(
            "programme alone", "programme batch")
        assert result["problem"]["field"] == f"events[{index}].{answer.field}"
    assert [results[0]["points"], results[LAST]["points"]] == [alone[0]["points"],
                                                               alone[LAST]["points"]] == [9, 9]
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
    assert (summary["applied"], summary["rejected"]) == (2, 7)
    assert members_and_signups(engine, "bulk") == (["n-good", "regular"],
                                                    ["signup:n-good", "signup:regular"])
    assert state(engine, "bulk") == state(engine, "alone")
    assert journal(engine, "bulk") == journal(engine, "alone")
    assert_journal_ok(engine)


def outcome(answer: Any) -> Any:
    if isinstance(answer, SetiaError):
        return type(answer).__name__, answer.field, answer.to_problem()["detail"]
    return answer["status"], answer["points"]


def test_a_signup_id_used_before_refuses_the_enrolment_in_every_path(engine):
    # Given a programme in which a till once sent its own event with the id "signup:dave"
    programmes(engine, "p")
    taken = purchase("signup:dave", "carol", "o-carol")
    assert ingest_event(engine, "p", taken, CLOCK)["status"] == "applied"
    stream = [purchase("d1", "dave", "o-d1"), purchase("d2", "dave", "o-d2"),
              purchase("e1", "erin", "o-e1")]
    conflict = ("IdempotencyConflict", "id",
                "event id 'signup:dave' was already used for a different event")

    # When dave's two first events and erin's go one by one, as a batch and as a group,
    # each time under other ids
    def renamed(prefix: str) -> list[dict[str, Any]]:
        return [dict(event, id=prefix + event["id"], order_id=prefix + event["order_id"])
                for event in stream]

    alone = []
    for event in renamed("a-"):
        try:
            alone.append(ingest_event(engine, "p", event, CLOCK))
        except SetiaError as exc:
            alone.append(exc)
    batch = ingest_batch(engine, "p", renamed("b-"), CLOCK)
    group = ingest_together(engine, "p", renamed("g-"), CLOCK)

    # Then dave's events are refused in every path, as enrolling him would be, and
    # erin's applied; dave was never enrolled
    assert [outcome(answer) for answer in alone] == [conflict, conflict, ("applied", 9)]
    assert [outcome(answer) for answer in group] == [conflict, conflict, ("applied", 9)]
    assert [(result["status"], result.get("problem", {}).get("detail"))
            for result in batch] == [("rejected", conflict[2]), ("rejected", conflict[2]),
                                     ("applied", None)]
    members, signups = members_and_signups(engine, "p")
    assert members == ["carol", "erin"]
    assert signups == ["signup:carol", "signup:erin"]  # "signup:dave" is a purchase
    assert_journal_ok(engine)


def test_an_event_reusing_the_id_of_a_signup_made_earlier_in_the_batch_is_refused(engine):
    # Given a batch in which dave's first purchase enrols him, then a till's event for
    # carol comes with the id "signup:dave"
    stream = [purchase("d1", "dave", "o-d1"), purchase("signup:dave", "carol", "o-c1")]

    # When it is applied as a batch, and one event at a time
    results, alone = batch_and_alone(engine, stream)

    # Then the second is refused in both, as a reuse of dave's signup id
    assert [result["status"] for result in results] == ["applied", "rejected"]
    assert results[1]["problem"]["detail"] == alone[1].to_problem()["detail"] == (
        "event id 'signup:dave' was already used for a different event")
    assert_batch_wrote_as_alone(engine)


def test_a_new_member_refused_first_then_enrolled_by_a_later_event_of_the_batch(engine):
    # Given a batch whose first event for a member nobody has seen is refused (a refund of
    # an order she never made), and whose next one, later, is her first purchase
    stream = [{"id": "r-first", "type": "refund", "member": "late", "order_id": "o-none",
               "occurred_at": "2027-05-09T09:00:00+08:00", "amount": "9.50"},
              purchase("p-late", "late", "o-late", when="2027-05-10T09:00:00+08:00")]

    # When it is applied as a batch, and one event at a time
    results, alone = batch_and_alone(engine, stream)

    # Then the refund is refused and the purchase enrols her at its own time, as alone
    assert [result["status"] for result in results] == ["rejected", "applied"]
    assert [type(alone[0]).__name__, alone[1]["status"]] == ["UnknownOrder", "applied"]
    with engine.connect() as conn:
        enrolled = conn.execute(sa.text("SELECT program_id, enrolled_at FROM members "
                                        "WHERE id = 'late' ORDER BY program_id")).all()
    assert [str(row[1])[:19] for row in enrolled] == ["2027-05-10 01:00:00"] * 2  # UTC
    assert_batch_wrote_as_alone(engine)


def test_an_event_with_its_own_new_members_signup_id_is_refused(engine):
    # Given a first event of a member nobody has seen, whose id is that of the signup
    # its enrolment would post
    stream = [purchase("signup:sam", "sam", "o-sam"), purchase("p-ok", "kim", "o-kim")]

    # When it is applied as a batch, and alone
    results, alone = batch_and_alone(engine, stream)

    # Then it is refused, naming its id, in both, and no one is enrolled by it
    detail = ("the event id 'signup:sam' is kept for the signup of member 'sam', which "
              "this event would enrol")
    assert [result["status"] for result in results] == ["rejected", "applied"]
    assert results[0]["problem"]["detail"] == alone[0].to_problem()["detail"] == detail
    assert results[0]["problem"]["field"] == "events[0].id"
    assert members_and_signups(engine, "batch") == (["kim"], ["signup:kim"])
    assert_batch_wrote_as_alone(engine)


def test_insert_ignore_tells_an_existing_key(engine):
    # Given a member row (members have a generated key, so the insert returns it)
    row = {"program_id": "p", "id": "zoe", "enrolled_at": CLOCK(), "tier_id": "member",
           "tier_reviewed": "2027", "available": 0, "pending": 0, "reserved": 0, "lot_seq": 0,
           "purchases": 0, "last_activity_at": None, "birthday_year": None, "name": None,
           "email": None, "phone": None, "birthday": None, "attributes": {}}
    answers = []
    for _ in range(2):
        with UnitOfWork(engine) as uow:
            answers.append(uow.insert_ignore(t.members, row, ["program_id", "id"]))
            uow.commit()
    # Then the first insert says it inserted, the second that the key was there
    assert answers == [True, False]
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM members WHERE id = 'zoe'")
                            ).scalar_one() == 1


@pytest.mark.postgres
def test_copies_of_a_new_members_first_event_at_once_replay_without_retries(pg_engine,
                                                                           monkeypatch):
    # Given auto-enrolment, and every retry of a transaction counted
    programmes(pg_engine, "p")
    retried: list[str] = []
    retryable = common._retryable

    def counted(exc: BaseException) -> bool:
        retried.append(type(exc).__name__)
        return retryable(exc)

    monkeypatch.setattr(common, "_retryable", counted)
    first = purchase("first", "newcomer", "o-first")
    start = threading.Barrier(12)

    def send(_: int) -> str:
        start.wait(timeout=30)
        return str(ingest_event(pg_engine, "p", dict(first), CLOCK)["status"])

    # When 12 clients send the same first event of a member nobody has seen, at once
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(send, range(12)))

    # Then one applies it and 11 replay it, each waiting for the enrolment, none retried
    assert Counter(answers) == Counter({"applied": 1, "replayed": 11})
    assert retried == []
    assert members_and_signups(pg_engine, "p") == (["newcomer"], ["signup:newcomer"])
    assert_journal_ok(pg_engine)


@pytest.mark.postgres
def test_a_new_members_event_enrolled_by_another_meanwhile_applies(pg_engine):
    # Given auto-enrolment, and two different first purchases of a member nobody has seen
    # (each would enrol her with its own time, so their signup events differ)
    programmes(pg_engine, "p")
    mine = purchase("twin-b", "twin", "o-twin-b", when="2027-05-10T10:00:00+08:00")
    other = purchase("twin-a", "twin", "o-twin-a", when="2027-05-10T09:00:00+08:00")
    me = threading.get_ident()
    done: list[Any] = []

    def meanwhile(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        # Just before this purchase reads its signup's id (having found no member), the
        # other purchase is applied to the end in another thread: it enrols her
        if (threading.get_ident() == me and not done and "signup:twin" in repr(parameters)
                and "events" in statement):
            with ThreadPoolExecutor(1) as pool:
                done.append(pool.submit(ingest_event, pg_engine, "p", other, CLOCK).result())

    sa.event.listen(pg_engine, "before_cursor_execute", meanwhile)
    try:
        # When this purchase is applied
        answer = ingest_event(pg_engine, "p", mine, CLOCK)
    finally:
        sa.event.remove(pg_engine, "before_cursor_execute", meanwhile)

    # Then the other enrolled her meanwhile, and this one is applied to her (it used to be
    # refused: the other's signup was taken for a signup id used by another event)
    assert [done[0]["status"], answer["status"]] == ["applied", "applied"]
    assert members_and_signups(pg_engine, "p") == (["twin"], ["signup:twin"])
    with pg_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT purchases FROM members WHERE id = 'twin'")
                            ).scalar_one() == 2
    assert_journal_ok(pg_engine)


def test_an_erased_members_event_sent_again_replays(engine):
    # Given a member enrolled by her first purchase, then erased (her events are kept under
    # a pseudonym, her signup among them)
    programmes(engine, "p")
    first = purchase("first", "gone", "o-gone")
    second = purchase("second", "gone", "o-gone-2", when="2027-05-12T09:00:00+08:00")
    assert ingest_event(engine, "p", first, CLOCK)["status"] == "applied"
    answer = ingest_event(engine, "p", second, CLOCK)
    assert answer["status"] == "applied"
    erase_member(engine, "p", "gone", "erase-gone", CLOCK)
    before = state(engine, "p")

    # When the till sends her second purchase again (its time is not her signup's)
    again = ingest_event(engine, "p", second, CLOCK)

    # Then it is replayed (no one is enrolled again) and nothing changed
    assert again == dict(answer, status="replayed")
    assert state(engine, "p") == before
    assert_journal_ok(engine)


def erased(engine: sa.Engine, program_id: str, member_id: str) -> str:
    """Enrol the member by a first purchase on 10 May, then erase her: her pseudonym."""
    first = purchase("first", member_id, "o-first")
    assert ingest_event(engine, program_id, first, CLOCK)["status"] == "applied"
    return str(erase_member(engine, program_id, member_id, f"erase-{program_id}",
                            CLOCK)["member"])


def balances_of(engine: sa.Engine, program_id: str, member_id: str) -> tuple[int, int, int]:
    view = get_member(engine, program_id, member_id, CLOCK)
    with engine.connect() as conn:
        purchases = conn.execute(sa.text("SELECT purchases FROM members WHERE program_id = :p "
                                         "AND id = :m"), {"p": program_id, "m": member_id}
                                 ).scalar_one()
    return view["balances"]["available"], view["balances"]["pending"], purchases


def test_an_erased_person_enrols_again_under_the_same_id_without_a_second_welcome(engine):
    # Given a person enrolled by her first purchase (50 welcome points and 9 for MYR 9.50,
    # pending), then erased
    programmes(engine, "p")
    pseudonym = erased(engine, "p", "gone")
    kept = balances_of(engine, "p", pseudonym)
    assert kept == (0, 59, 1)

    # When she enrols again under the same id, at another time
    view, created = upsert_member(engine, "p", "gone", {"name": "Back", "enrolled_at":
                                                        "2027-06-01T09:00:00+08:00"}, CLOCK)

    # Then she is a new member with no second welcome bonus: her signup's id holds her
    # first signup, which stays on the pseudonymous account with its points
    assert created is True
    assert (view["name"], view["balances"]) == ("Back", {"available": 0, "pending": 0,
                                                          "reserved": 0})
    assert balances_of(engine, "p", pseudonym) == kept
    members, signups = members_and_signups(engine, "p")
    assert members == [pseudonym, "gone"]  # sorted
    assert signups == ["signup:gone"]
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT member_id FROM events WHERE id = 'signup:gone'")
                            ).scalar_one() == pseudonym
        # welcomed again; her first welcome names the erased account's pseudonym
        assert sorted(conn.execute(sa.text(
            "SELECT member_id FROM outbox WHERE type = 'member.enrolled' AND member_id IN "
            "('gone', :pseudonym)"), {"pseudonym": pseudonym}).scalars()) == sorted(
                ["gone", pseudonym])
    # and enrolling her again replays as an update
    assert upsert_member(engine, "p", "gone", {"name": "Back"}, CLOCK)[1] is False
    assert_journal_ok(engine)


def test_a_tills_own_signup_event_is_not_taken_for_an_erased_persons_signup(sqlite_engine):
    # Given on SQLite (which forgets pruned event ids) a member whose signup was pruned,
    # after which a till sent its own event "signup:kay" for her, with attributes
    engine = sqlite_engine
    programmes(engine, "p")
    ingest_event(engine, "p", purchase("k1", "kay", "o-k1", when="2027-01-05T09:00:00+08:00"),
                 fixed_clock("2027-01-05T10:00:00+08:00"))
    assert prune_events(engine, CLOCK()) == {"p": 2}
    own = {"id": "signup:kay", "type": "visit", "member": "kay", "attributes": {"till": 3},
           "occurred_at": "2027-05-30T09:00:00+08:00"}
    assert ingest_event(engine, "p", own, CLOCK)["status"] == "applied"
    erase_member(engine, "p", "kay", "erase-kay", CLOCK)
    before = state(engine, "p")

    # When kay enrols again under the same id
    with pytest.raises(IdempotencyConflict) as refused:
        upsert_member(engine, "p", "kay", {"name": "Kay"}, CLOCK)

    # Then it is refused, as the till's event holds her signup's id, and nothing changed
    assert refused.value.to_problem()["detail"] == (
        "event id 'signup:kay' was already used for a different event")
    assert state(engine, "p") == before
    assert_journal_ok(engine)


def pruned_january(engine: sa.Engine, program_ids: tuple[str, ...],
                   purchases: dict[str, str]) -> None:
    """Programmes that keep events 3 months, in which each member (by the id of her
    purchase) enrolled by a purchase on 5 January, pruned since: her signup and purchase."""
    programmes(engine, *program_ids)
    january = fixed_clock("2027-01-05T10:00:00+08:00")
    for program_id in program_ids:
        for member, event_id in purchases.items():
            ingest_event(engine, program_id, purchase(event_id, member, f"o-{event_id}",
                                                      when="2027-01-05T09:00:00+08:00"), january)
    assert prune_events(engine, CLOCK()) == dict.fromkeys(program_ids, 2 * len(purchases))


@pytest.mark.postgres
def test_an_erased_person_whose_signup_was_pruned_enrols_again_on_postgresql(pg_engine):
    # Given, in three programmes that keep events 3 months, a person enrolled in January,
    # whose events were pruned (PostgreSQL keeps their ids registered), then erased
    engine = pg_engine
    pruned_january(engine, ("put", "batch", "alone"), {"kay": "kay-1", "lee": "lee-1"})
    for program_id in ("put", "batch", "alone"):
        for member in ("kay", "lee"):
            erase_member(engine, program_id, member, f"erase-{program_id}-{member}", CLOCK)
    # lee's first event comes under her signup's id, registered only
    stream = [purchase("k2", "kay", "o-k2", when="2027-05-30T09:00:00+08:00"),
              purchase("signup:lee", "lee", "o-l2", when="2027-05-30T09:00:00+08:00")]

    # When she enrols again under the same id: by PUT, by an event in a batch, and alone
    view, created = upsert_member(engine, "put", "kay", {"name": "Kay"}, CLOCK)
    results = ingest_batch(engine, "batch", stream, CLOCK)
    alone = one_by_one_of(engine, "alone", stream)

    # Then each enrols her without a signup (its id stays registered: posting it again
    # used to collide with it, and the request was retried until it answered 503)
    assert created is True and view["balances"]["pending"] == 0
    assert [results[0]["status"], alone[0]["status"]] == ["applied", "applied"]
    assert results[0]["points"] == alone[0]["points"] == 18  # 9, doubled on a Sunday
    # and lee's event is refused alike in both, as one taking her signup's id
    assert (results[1]["status"], results[1]["problem"]["type"].rsplit("/", 1)[-1],
            results[1]["problem"]["field"]) == ("rejected", "invalid-field", "events[1].id")
    assert (type(alone[1]).__name__, alone[1].field) == ("InvalidField", "id")
    for program_id in ("put", "batch", "alone"):
        assert members_and_signups(engine, program_id)[1] == []
    assert_journal_ok(engine)


def test_an_erased_persons_new_event_enrols_her_again_alone_and_in_a_batch(engine):
    # Given the same person erased in two programmes
    programmes(engine, "batch", "alone")
    pseudonyms = {program_id: erased(engine, program_id, "gone")
                  for program_id in ("batch", "alone")}
    stream = [purchase("again-1", "gone", "o-again-1", when="2027-05-20T09:00:00+08:00"),
              purchase("again-2", "gone", "o-again-2", when="2027-05-21T09:00:00+08:00")]

    # When her next two purchases come under the same id, as a batch and one at a time
    results = ingest_batch(engine, "batch", stream, CLOCK)
    alone = one_by_one_of(engine, "alone", stream)

    # Then the first enrols her again and both apply: each purchase earns its 9 points,
    # and no welcome bonus is posted (her first signup holds its id)
    assert [result["status"] for result in results] == ["applied", "applied"]
    assert [answer["status"] for answer in alone] == ["applied", "applied"]
    assert [result["points"] for result in results] == [answer["points"] for answer in alone] \
        == [9, 9]
    for program_id, pseudonym in pseudonyms.items():
        assert balances_of(engine, program_id, "gone") == (0, 18, 2)
        assert balances_of(engine, program_id, pseudonym) == (0, 59, 1)
        assert members_and_signups(engine, program_id) == ([pseudonym, "gone"],
                                                           ["signup:gone"])
    def unnamed(program_id: str) -> list[tuple[Any, ...]]:
        return [(row[0] != pseudonyms[program_id] and row[0], *row[1:])
                for row in journal(engine, program_id)]

    assert unnamed("batch") == unnamed("alone")
    assert_journal_ok(engine)


@pytest.mark.postgres
def test_a_member_put_twice_at_once_is_created_once_and_updated_once(pg_engine):
    # Given no member "pat"
    programmes(pg_engine, "p")
    start = threading.Barrier(2)

    def put(name: str) -> bool:
        start.wait(timeout=30)
        return upsert_member(pg_engine, "p", "pat", {"name": name}, CLOCK)[1]

    # When two requests enrol her at once, with different names
    with ThreadPoolExecutor(2) as pool:
        created = list(pool.map(put, ["Pat A", "Pat B"]))

    # Then one created her and the other updated her profile (its name is not lost)
    assert sorted(created) == [False, True]
    loser = ["Pat A", "Pat B"][created.index(False)]
    with pg_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT name FROM members WHERE id = 'pat'")
                            ).scalar_one() == loser
    assert members_and_signups(pg_engine, "p") == (["pat"], ["signup:pat"])
    assert_journal_ok(pg_engine)


@pytest.mark.postgres
def test_a_pruned_event_id_sent_again_is_refused_as_a_conflict_on_postgresql(pg_engine):
    # Given, in three programmes that keep events 3 months, kay's January purchase "k1",
    # pruned since (PostgreSQL keeps its id registered)
    engine = pg_engine
    pruned_january(engine, ("alone", "batch", "group"), {"kay": "k1"})
    before = {program_id: state(engine, program_id) for program_id in ("alone", "batch", "group")}
    again = purchase("k1", "kay", "o-k1-again", when="2027-05-30T09:00:00+08:00")
    other = purchase("k2", "kay", "o-k2", when="2027-05-30T09:00:00+08:00")

    # When a till sends another purchase under that id, recent enough to be kept: alone,
    # in a batch, and in a group of single events beside another purchase
    with pytest.raises(IdempotencyConflict) as refused:
        ingest_event(engine, "alone", again, CLOCK)
    results = ingest_batch(engine, "batch", [again, other], CLOCK)
    grouped = ingest_together(engine, "group", [again, other], CLOCK)

    # Then it is refused as an id already used, as an event still stored would be (it
    # used to collide with the registered id and be retried until it answered 503)
    assert (refused.value.to_problem()["detail"], refused.value.field) == (
        "event id 'k1' was already used for a different event", "id")
    assert (results[0]["status"], results[0]["problem"]["type"].rsplit("/", 1)[-1],
            results[0]["problem"]["field"]) == ("rejected", "idempotency-conflict",
                                                "events[0].id")
    assert (type(grouped[0]).__name__, grouped[0].field) == ("IdempotencyConflict", "id")
    # and changed nothing; the other purchase applies, earning its 9 points doubled on a
    # Sunday
    assert state(engine, "alone") == before["alone"]
    assert results[1]["status"] == grouped[1]["status"] == "applied"
    assert results[1]["points"] == grouped[1]["points"] == 18
    for program_id in ("batch", "group"):
        after = state(engine, program_id)
        assert [row[0] for row in after["events"]] == ["k2"]
        assert len(after["orders"]) == len(before[program_id]["orders"]) + 1
    assert_journal_ok(engine)
