"""Bulk import of events (JSON Lines or CSV), idempotent by event id.

Each batch of rows runs ``batch.apply_batch``, the code of the batch endpoint:
one unit of work per batch, each member loaded and locked once, every change
written with one batched statement per table at commit. A bad row is refused
before it changes anything and goes to the report; the rest load.
"""

from __future__ import annotations

import codecs
import csv
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa

from setia.adapters.db.store import UnitOfWork
from setia.domain.errors import SetiaError
from setia.service.batch import apply_batch, bulk_transaction
from setia.service.common import Clock, require_programme, require_programme_id, utc_now

MAX_BATCH = 5000
CSV_JSON_COLUMNS = ("lines", "attributes")

Progress = Callable[[int], None]


class Unreadable(str):
    """Why a row could not be read, for the report (a row that is a JSON string is a row,
    refused as an event like any other)."""


def read_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed row) for each row; a row that cannot be read (not UTF-8, not
    JSON, not CSV, more CSV fields than the header names) is an ``Unreadable`` error, for
    the report: it never stops the import."""
    if path.suffix.lower() == ".csv":
        yield from _csv_rows(path)
        return
    for number, text in _jsonl_lines(path):
        if not text.strip():
            continue
        try:
            yield number, orjson.loads(text)
        except json.JSONDecodeError as exc:
            yield number, Unreadable(f"not JSON: {exc.msg}")


def _csv_rows(path: Path) -> Iterator[tuple[int, Any]]:
    # Bytes that are not UTF-8 are kept as lone surrogates, to be found per row below;
    # a byte order mark at the start is no part of the first column's name.
    with path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as handle:
        taken = [0]  # lines the reader took, an error's included (its line_num is not)

        def lines() -> Iterator[str]:
            for line in handle:
                taken[0] += 1
                yield line

        reader = csv.DictReader(lines())
        try:
            reader.fieldnames  # the header line, read first  # noqa: B018
        except csv.Error as exc:
            yield 1, Unreadable(f"not CSV: {exc} (the header)")
            return
        while True:
            first = taken[0] + 1
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                # e.g. a quote opened and never closed, which reads the lines after it into
                # one field until the field limit: that row (named by its first line) is
                # refused, and the reader goes on after the lines it took
                span = f" (lines {first} to {taken[0]})" if taken[0] > first else ""
                yield first, Unreadable(f"not CSV: {exc}{span}")
                continue
            number = reader.line_num  # the file's line (a quoted field may span lines)
            if None in record:
                yield number, Unreadable(f"{len(record[None])} more field(s) than the header "
                                         "names")
                continue
            if any(_undecoded(v) for v in (*record, *record.values()) if v is not None):
                yield number, Unreadable("not UTF-8 text")
                continue
            row: dict[str, Any] = {k: v for k, v in record.items() if v not in (None, "")}
            try:
                for key in CSV_JSON_COLUMNS:
                    if key in row:
                        row[key] = orjson.loads(row[key])
            except json.JSONDecodeError as exc:
                yield number, Unreadable(f"column {key} is not JSON: {exc.msg}")
                continue
            yield number, row


def _jsonl_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of a JSON Lines file: lines end in LF, CRLF or CR alone (a raw
    CR cannot be part of a JSON document but as white space between its tokens)."""
    number = 0
    with path.open("rb") as handle:  # orjson reads bytes and refuses what is not UTF-8
        for chunk in handle:
            if number == 0:
                chunk = chunk.removeprefix(codecs.BOM_UTF8)
            for text in (chunk.splitlines() if b"\r" in chunk else (chunk,)):
                number += 1
                yield number, text


_UNDECODED = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8 (surrogateescape)


def _undecoded(text: str) -> bool:
    """Whether ``text`` holds bytes that were not UTF-8."""
    return not text.isascii() and _UNDECODED.search(text) is not None


def count_rows(path: Path) -> int:
    """Rows to import, for the progress bar (a CSV field spanning lines counts each)."""
    if path.suffix.lower() == ".csv":
        with path.open("rb") as handle:
            return sum(1 for line in handle if line.strip()) - 1
    return sum(1 for _, text in _jsonl_lines(path) if text.strip())


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
    with engine.connect() as conn:  # an unknown programme, even for a file of no events
        require_programme_id(conn, program_id)
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
    """Apply a batch of rows in one transaction (``batch.apply_batch``, as the batch
    endpoint does); refused rows are returned, not raised."""

    def work(uow: UnitOfWork) -> dict[str, Any]:
        programme = require_programme(uow, program_id)
        events = [(number, row) for number, row in rows if not isinstance(row, Unreadable)]
        outcomes = iter(apply_batch(uow, programme, [row for _, row in events], clock()))
        applied = replayed = 0
        refused: list[dict[str, Any]] = []
        for number, row in rows:
            if isinstance(row, Unreadable):  # a line that could not be read
                refused.append({"row": number, "problem": {"detail": row}})
                continue
            outcome = next(outcomes)
            if isinstance(outcome, SetiaError):
                refused.append({"row": number, "id": row.get("id") if isinstance(row, dict)
                                else None, "problem": outcome.to_problem()})
            elif outcome["status"] == "replayed":
                replayed += 1
            else:
                applied += 1
        uow.commit()
        return {"applied": applied, "replayed": replayed, "rejected": refused}

    return bulk_transaction(engine, work)
