"""Structured JSON logs with a request id, and the Prometheus metrics every process keeps.

``configure_logging`` makes every log line one JSON object (time, level, logger,
message, request_id when inside a request, and any ``extra`` fields). Request ids
come from the caller's ``X-Request-ID`` header when it is a plain token, otherwise a
new one; answers carry it back. Nothing secret or personal is logged: no headers, no
bodies, no query strings.

Metrics live in the process's default registry. With several API processes set
PROMETHEUS_MULTIPROC_DIR (prometheus_client's multiprocess mode) so /metrics adds
them up.
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
import sys
from typing import Any

from prometheus_client import Counter, Histogram
from pythonjsonlogger.json import JsonFormatter

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id",
                                                                        default=None)
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")

REQUEST_SECONDS = Histogram(
    "setia_http_request_duration_seconds", "HTTP request latency",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
EVENTS_INGESTED = Counter("setia_events_ingested_total", "Events applied, by type of result",
                          ["status"])
POINTS_ISSUED = Counter("setia_points_issued_total", "Points earned by applied events")
DELIVERY_ATTEMPTS = Counter("setia_delivery_attempts_total",
                            "Webhook and email delivery attempts (worker processes)",
                            ["channel", "outcome"])


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        return True


def configure_logging(level: int = logging.INFO) -> None:
    """JSON lines on stderr for every logger (uvicorn's too); idempotent."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        timestamp=False,
    ))
    handler.addFilter(_RequestIdFilter())
    # The lines carry no caller, thread or process fields, so records need not look them
    # up (the "Optimization" settings of Python's logging HOWTO): finding the caller walked
    # the stack for every request's line, 1.4 % of the API server's CPU under load.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


_INGESTED: dict[str, Any] = {}  # status -> EVENTS_INGESTED's child for it


def count_results(results: list[dict[str, Any]]) -> None:
    """Count applied / replayed / rejected events and the points they issued."""
    issued = 0
    counts: dict[str, int] = {}
    for result in results:
        status = str(result.get("status", "rejected"))
        counts[status] = counts.get(status, 0) + 1
        points = result.get("points")
        if status == "applied" and isinstance(points, int) and points > 0:
            issued += points
    for status, count in counts.items():
        child = _INGESTED.get(status)
        if child is None:
            child = _INGESTED[status] = EVENTS_INGESTED.labels(status)
        child.inc(count)
    if issued:
        POINTS_ISSUED.inc(issued)
