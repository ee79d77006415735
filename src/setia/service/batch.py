"""A batch of events in one transaction: one result per event, a bad event refused alone."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from setia.adapters.db.store import UnitOfWork
from setia.domain.errors import InvalidField, SetiaError
from setia.domain.events import parse_event
from setia.service.common import Clock, require_programme, transaction, utc_now
from setia.service.events import apply_event

MAX_BATCH_EVENTS = 1000


def ingest_batch(engine: sa.Engine, program_id: str, events: Any,
                 clock: Clock = utc_now) -> list[dict[str, Any]]:
    if not isinstance(events, list):
        raise InvalidField("events must be a list", field="events")
    if not 1 <= len(events) <= MAX_BATCH_EVENTS:
        raise InvalidField(f"a batch holds 1 to {MAX_BATCH_EVENTS} events", field="events")

    def work(uow: UnitOfWork) -> list[dict[str, Any]]:
        programme = require_programme(uow, program_id)
        now = clock()
        dicts = [e for e in events if isinstance(e, dict)]
        known = uow.stored_events(programme.id, [e["id"] for e in dicts
                                                 if isinstance(e.get("id"), str)])
        uow.preload_members(programme.id, [e["member"] for e in dicts
                                           if isinstance(e.get("member"), str)])
        results: list[dict[str, Any]] = []
        for index, raw in enumerate(events):
            try:
                event = parse_event(raw, programme.currency)
                results.append(apply_event(uow, programme, event, raw, now, known=known))
            except SetiaError as exc:
                problem = exc.to_problem()
                if exc.field:
                    problem["field"] = f"events[{index}].{exc.field}"
                event_id = raw.get("id") if isinstance(raw, dict) else None
                results.append({"event": event_id, "status": "rejected", "problem": problem})
        uow.commit()
        return results

    return transaction(engine, work)
