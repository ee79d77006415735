"""Many events in one transaction, one outcome per event, a bad event refused alone: the
``POST /events/batch`` endpoint (``ingest_batch``) and the bulk importer
(``importer.import_batch``) both run ``apply_batch``.

Every event goes through the same ``apply_event`` as live ingestion, but the batch shares
one unit of work: stored event ids, members (locked), orders and the rows of members
about to be enrolled are read or written with a handful of statements for the whole
batch, and every change is written with one batched statement per table at commit.
"""

from __future__ import annotations

import contextlib
import gc
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa

from setia.adapters.db.store import UnitOfWork
from setia.domain import tiers
from setia.domain.errors import InvalidField, SetiaError
from setia.domain.events import Event, parse_event
from setia.domain.programme import Programme
from setia.service import fraud
from setia.service.common import Clock, request_hash, require_programme, transaction, utc_now
from setia.service.events import apply_event, ingest_event
from setia.service.members import MEMBER_ID

MAX_BATCH_EVENTS = 1000
T = TypeVar("T")


def ingest_batch(engine: sa.Engine, program_id: str, events: Any,
                 clock: Clock = utc_now) -> list[dict[str, Any]]:
    if not isinstance(events, list):
        raise InvalidField("events must be a list", field="events")
    if not 1 <= len(events) <= MAX_BATCH_EVENTS:
        raise InvalidField(f"a batch holds 1 to {MAX_BATCH_EVENTS} events", field="events")

    def work(uow: UnitOfWork) -> list[dict[str, Any]]:
        programme = require_programme(uow, program_id)
        outcomes = apply_batch(uow, programme, events, clock())
        results: list[dict[str, Any]] = []
        for index, (raw, outcome) in enumerate(zip(events, outcomes, strict=True)):
            if isinstance(outcome, SetiaError):
                problem = outcome.to_problem()
                if outcome.field:
                    problem["field"] = f"events[{index}].{outcome.field}"
                event_id = raw.get("id") if isinstance(raw, dict) else None
                results.append({"event": event_id, "status": "rejected", "problem": problem})
            else:
                results.append(outcome)
        uow.commit()
        return results

    return bulk_transaction(engine, work)


def ingest_together(engine: sa.Engine, program_id: str, payloads: list[Any],
                    clock: Clock = utc_now) -> list[dict[str, Any] | Exception]:
    """Single events of several callers (``POST /events`` requests that arrived while
    earlier ones were being applied), in one transaction: each one's result, or the error
    that refused it, exactly as ``ingest_event`` would have answered it alone. They go
    through ``apply_batch`` in the order given, as if sent one after the other.

    A refused event leaves nothing behind here either (``apply_event`` enrols a new member
    only after every refusal), so the others' answers are the ones they would get without
    it. If the transaction itself fails (the programme is unknown, the database refuses a
    write, it stays busy), every event is applied on its own with ``ingest_event``, so that
    one event's failure is never another's. One event alone takes ``ingest_event``'s
    shorter path. docs/decisions/event-groups.md says why."""
    if len(payloads) == 1:
        return [_alone(engine, program_id, payloads[0], clock)]

    def work(uow: UnitOfWork) -> list[dict[str, Any] | SetiaError]:
        programme = require_programme(uow, program_id)
        outcomes = apply_batch(uow, programme, payloads, clock())
        uow.commit()
        return outcomes

    try:
        return list(transaction(engine, work))
    except Exception:  # noqa: BLE001, S110 - each event answered on its own instead
        pass
    return [_alone(engine, program_id, payload, clock) for payload in payloads]


def _alone(engine: sa.Engine, program_id: str, payload: Any,
           clock: Clock) -> dict[str, Any] | Exception:
    try:
        return ingest_event(engine, program_id, payload, clock)
    except Exception as exc:  # noqa: BLE001 - handed to its caller, who raises it
        return exc


def bulk_transaction(engine: sa.Engine, work: Callable[[UnitOfWork], T]) -> T:
    """``transaction`` with the cyclic garbage collector paused. A batch allocates tens of
    thousands of short-lived objects and frees them by reference counting (the unit of work
    lets go of its members on exit); the collector's full passes over the whole heap
    meanwhile found nothing to free and cost ~13 % of the time."""
    with collector_paused():
        return transaction(engine, work)


_pauses = 0  # bulk transactions running now, in any thread
_pauses_lock = threading.Lock()
_collecting = False  # whether the collector ran before the first of them paused it
_collected_at = 0.0  # when the collector last ran, or was paused with nothing running
MAX_PAUSE_SECONDS = 10.0


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic garbage collector paused while any thread is inside: the first in pauses
    it, the last out lets it run again if it ran before. (Each thread saving and restoring
    ``gc.isenabled()`` on its own would let the first to finish turn it back on under the
    others, as two API requests' batches overlapping did.) Batches that keep overlapping
    never let the count reach zero, so one that ends while others run and finds the
    collector paused for over ``MAX_PAUSE_SECONDS`` runs it once: cyclic garbage stays
    bounded under a steady load of batches, at the cost of one pass every 10 s."""
    global _pauses, _collecting, _collected_at
    with _pauses_lock:
        if _pauses == 0:
            _collecting = gc.isenabled()
            _collected_at = time.monotonic()
            gc.disable()
        _pauses += 1
    try:
        yield
    finally:
        overdue = False
        with _pauses_lock:
            _pauses -= 1
            if _pauses == 0:
                if _collecting:
                    gc.enable()
            elif _collecting and time.monotonic() - _collected_at > MAX_PAUSE_SECONDS:
                _collected_at = time.monotonic()
                overdue = True
        if overdue:
            gc.collect()


def apply_batch(uow: UnitOfWork, programme: Programme, raws: list[Any],
                now: datetime) -> list[dict[str, Any] | SetiaError]:
    """Apply each raw event in order; its result, or the error that refused it (before it
    changed anything)."""
    engine = uow.engine
    if uow.dialect == "postgresql" and (engine.dialect.server_version_info or ()) >= (12,):
        # The batch reads take their keys as arrays the driver prepares server-side; a generic plan
        # made while the tables were small (a seq scan) would be kept as they grow and cost
        # more with every batch. Plan them for their values, in this transaction only.
        uow.execute(sa.text("SET LOCAL plan_cache_mode = force_custom_plan"))
    # Parsing is pure, so every event is parsed first; a refused one keeps its place.
    parsed: list[Event | SetiaError] = []
    for raw in raws:
        try:
            parsed.append(parse_event(raw, programme.currency))
        except SetiaError as exc:
            parsed.append(exc)
    events = [event for event in parsed if isinstance(event, Event)]
    # What needs no member lock is done before the members are locked, so that a concurrent
    # batch of the same members waits for less: request digests, and which of the orders
    # that only purchases name do not exist yet. An order found is read again under the
    # lock (a refund may change it meanwhile), and so is every order a refund or another
    # event names (one that waits for the lock must see an order its holder records). An
    # order that purchases name and another transaction inserts meanwhile makes this one's
    # insert fail on the orders' key, and ``transaction`` runs the batch again, which then
    # finds it. Stored events are read under the lock: the holder of a member's lock may
    # be applying the same event (a till that sent it twice), and this batch must then
    # replay it, not find its order recorded by "another" event.
    digests = {id(raw): request_hash(raw) for raw, event in zip(raws, parsed, strict=True)
               if isinstance(event, Event)}
    named_otherwise = {event.order_id for event in events if event.type != "purchase"}
    uow.preload_orders(programme.id, [event.order_id for event in events
                                      if event.type == "purchase" and event.order_id is not None
                                      and event.order_id not in named_otherwise],
                       programme.currency, absent_only=True)
    uow.preload_members(programme.id, [event.member for event in events])
    # New members' rows are inserted before the stored events are read: an insert waits for
    # a concurrent enrolment of the same member, whose events the reads then find.
    signups = _prepare_enrolments(uow, programme, events) if programme.model.auto_enroll else []
    # Then the receipt locks of a programme that screens duplicate receipts, all at once in
    # one order, as a single event takes its one after its member's row.
    fraud.lock_receipts(uow, programme, events)
    known = uow.stored_events(programme.id, [event.id for event in events] + signups)
    uow.preload_orders(programme.id, [event.order_id for event in events
                                      if event.order_id is not None], programme.currency)
    outcomes: list[dict[str, Any] | SetiaError] = []
    for raw, event in zip(raws, parsed, strict=True):
        if isinstance(event, SetiaError):
            outcomes.append(event)
            continue
        try:
            outcomes.append(apply_event(uow, programme, event, raw, now, known=known,
                                        digest=digests[id(raw)], sent=True))
        except SetiaError as exc:
            outcomes.append(exc)
    return outcomes


def _prepare_enrolments(uow: UnitOfWork, programme: Programme, events: list[Event]
                        ) -> list[str]:
    """Insert the members this batch will enrol in a few statements. Each is enrolled (its
    signup posted) by its first event as before; only the row is written ahead. Answers
    their signups' event ids, which enrolling looks up (``members.signup_taken``)."""
    first = programme.model.tiers.levels[0].id
    enrolments: dict[str, tuple[str, datetime, str, str]] = {}
    for event in events:
        member_id = event.member
        if (member_id in enrolments or uow.loaded_member(programme.id, member_id) is not None
                or not MEMBER_ID.fullmatch(member_id)):
            continue
        local = event.occurred_at.astimezone(programme.tz)
        enrolments[member_id] = (member_id, event.occurred_at, first,
                                 tiers.review_period(programme, local))
    if enrolments:
        uow.prepare_members(programme.id, list(enrolments.values()))
    return [f"signup:{member_id}" for member_id in enrolments]
