"""Bulk import of events (JSON Lines or CSV), idempotent by event id.

Events go through the same ``apply_event`` as live ingestion, but a whole batch
shares one unit of work: each member is loaded and locked once per batch and
every change is written with one batched statement per table at commit. A bad
row is refused before it changes anything and goes to the report; the rest
load.
"""

from __future__ import annotations

import csv
import gc
import json
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from setia.adapters.db.store import UnitOfWork
from setia.domain import tiers
from setia.domain.errors import SetiaError
from setia.domain.events import Event, parse_event
from setia.domain.programme import Programme
from setia.service.common import Clock, require_programme, transaction, utc_now
from setia.service.events import apply_event
from setia.service.members import MEMBER_ID

MAX_BATCH = 5000
CSV_JSON_COLUMNS = ("lines", "attributes")

Progress = Callable[[int], None]


def read_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed row) for each row; a row that cannot be parsed is a string error."""
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            for number, record in enumerate(csv.DictReader(handle), start=2):
                row: dict[str, Any] = {k: v for k, v in record.items() if v not in (None, "")}
                try:
                    for key in CSV_JSON_COLUMNS:
                        if key in row:
                            row[key] = json.loads(row[key])
                except json.JSONDecodeError as exc:
                    yield number, f"column {key} is not JSON: {exc.msg}"
                    continue
                yield number, row
        return
    with path.open(encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                yield number, json.loads(text)
            except json.JSONDecodeError as exc:
                yield number, f"not JSON: {exc.msg}"


def count_rows(path: Path) -> int:
    with path.open("rb") as handle:
        lines = sum(1 for line in handle if line.strip())
    return lines - 1 if path.suffix.lower() == ".csv" else lines


def import_events(
    engine: sa.Engine,
    program_id: str,
    path: Path,
    *,
    batch_size: int = 1000,
    report_path: Path | None = None,
    progress: Progress | None = None,
    clock: Clock = utc_now,
) -> dict[str, Any]:
    batch_size = max(1, min(batch_size, MAX_BATCH))
    report_path = report_path or path.with_suffix(path.suffix + ".rejected.jsonl")
    counts = {"rows": 0, "applied": 0, "replayed": 0, "rejected": 0}
    rejected: list[dict[str, Any]] = []
    started = time.perf_counter()
    batch: list[tuple[int, Any]] = []

    def flush() -> None:
        if batch:
            outcome = import_batch(engine, program_id, batch, clock)
            for key in ("applied", "replayed"):
                counts[key] += outcome[key]
            rejected.extend(outcome["rejected"])
            counts["rejected"] += len(outcome["rejected"])
            if progress:
                progress(len(batch))
            batch.clear()

    for number, row in read_rows(path):
        counts["rows"] += 1
        batch.append((number, row))
        if len(batch) >= batch_size:
            flush()
    flush()
    if rejected:
        with report_path.open("w", encoding="utf-8") as handle:
            for item in rejected:
                handle.write(json.dumps(item, ensure_ascii=False) + "\n")
    seconds = time.perf_counter() - started
    return {
        **counts,
        "seconds": round(seconds, 2),
        "events_per_second": int(counts["rows"] / seconds) if seconds > 0 else 0,
        "report": str(report_path) if rejected else None,
    }


def import_batch(
    engine: sa.Engine, program_id: str, rows: list[tuple[int, Any]], clock: Clock = utc_now
) -> dict[str, Any]:
    """Apply a batch of rows in one transaction; refused rows are returned, not raised."""

    def work(uow: UnitOfWork) -> dict[str, Any]:
        if uow.dialect == "postgresql" and (engine.dialect.server_version_info or ()) >= (12,):
            # The batch reads run with IN lists the driver prepares server-side; a generic plan
            # made while the tables were small (a seq scan) would be kept as they grow and cost
            # more with every batch. Plan them for their values, in this transaction only.
            uow.execute(sa.text("SET LOCAL plan_cache_mode = force_custom_plan"))
        programme = require_programme(uow, program_id)
        now = clock()
        # Parsing is pure, so every row is parsed first; a refused row is reported in its place.
        parsed: list[tuple[int, Any, Event | None, SetiaError | None]] = []
        for number, row in rows:
            if isinstance(row, str):
                parsed.append((number, row, None, None))
                continue
            try:
                parsed.append((number, row, parse_event(row, programme.currency), None))
            except SetiaError as exc:
                parsed.append((number, row, None, exc))
        events = [event for _, _, event, _ in parsed if event is not None]
        known = uow.stored_events(programme.id, [event.id for event in events])
        uow.preload_members(programme.id, [event.member for event in events])
        uow.preload_orders(programme.id, [event.order_id for event in events
                                          if event.order_id is not None], programme.currency)
        if programme.model.auto_enroll:
            _prepare_enrolments(uow, programme, events)
        applied = replayed = 0
        refused: list[dict[str, Any]] = []
        for number, row, event, error in parsed:
            if isinstance(row, str):
                refused.append({"row": number, "problem": {"detail": row}})
                continue
            try:
                if error is not None:
                    raise error
                assert event is not None
                result = apply_event(uow, programme, event, row, now, known=known)
            except SetiaError as exc:
                refused.append(
                    {
                        "row": number,
                        "id": row.get("id") if isinstance(row, dict) else None,
                        "problem": exc.to_problem(),
                    }
                )
                continue
            if result["status"] == "replayed":
                replayed += 1
            else:
                applied += 1
        uow.commit()
        return {"applied": applied, "replayed": replayed, "rejected": refused}

    # A batch allocates tens of thousands of short-lived objects and frees them by reference
    # counting (the unit of work lets go of its members on exit); the cyclic collector's full
    # passes over the whole heap meanwhile found nothing to free and cost ~13 % of the time.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return transaction(engine, work)
    finally:
        if collecting:
            gc.enable()


def _prepare_enrolments(uow: UnitOfWork, programme: Programme, events: list[Event]) -> None:
    """Insert the members this batch will enrol in a few statements. Each is enrolled (its
    signup posted) by its first event as before; only the row is written ahead."""
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
        # each enrolment looks up its signup event id: read them all at once
        uow.stored_events(programme.id, [f"signup:{member_id}" for member_id in enrolments])
