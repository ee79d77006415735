"""Operations over HTTP: webhook endpoints and the dead-letter list (admin), /metrics,
and 503 answers while the database is away (request ids and latency: front.py).

``install(app)`` adds all of it to the application in one call.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily

from setia.domain.notifications import MESSAGE_TYPES
from setia.entrypoints import observability as obs
from setia.entrypoints.api.auth import Caller, require
from setia.entrypoints.api.schemas import PROBLEM_RESPONSES
from setia.service import deliveries
from setia.service.common import RETRY_AFTER_SECONDS

log = logging.getLogger("setia.http")
PROBLEM = "application/problem+json"
router = APIRouter()
IdempotencyKey = Header(alias="Idempotency-Key", min_length=1, max_length=200,
                        description="the caller's key for this write")
WEBHOOK_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["url"], "additionalProperties": False,
    "properties": {"url": {"type": "string", "examples": ["https://shop.example/hooks"]},
                   "types": {"type": "array", "minItems": 1,
                             "items": {"type": "string", "enum": list(MESSAGE_TYPES)}}}}}}}}
REPLAY_BODY = {"requestBody": {"required": False, "content": {"application/json": {"schema": {
    "type": "object", "additionalProperties": False,
    "properties": {"ids": {"type": "array", "maxItems": 1000, "items": {"type": "integer"}}}}}}}}
count_results = obs.count_results
base = "/v1/programs/{program}"


def _unavailable(exc: Exception) -> bool:
    """Whether a database error means "the database is away" (a lost or refused
    connection, a server shutting down), not a fault of ours such as a missing table."""
    if getattr(exc, "connection_invalidated", False) or isinstance(exc, sa.exc.InterfaceError):
        return True
    orig = getattr(exc, "orig", None)
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate:
        return str(sqlstate).startswith(("08", "57P"))
    # psycopg reports a failed connection attempt without a SQLSTATE; SQLite's
    # OperationalError ("no such table") is never unavailability.
    return orig is not None and type(orig).__module__.startswith("psycopg")


def _database_away(request: Request, exc: Exception) -> JSONResponse:
    """The database did not answer (restarting, failing over): 503 with Retry-After. Every
    write is idempotent by its key, so the retry is safe even if the commit went through.
    Any other database error is an internal error (500), as for every unexpected error."""
    if not _unavailable(exc):
        from setia.entrypoints.api.app import _unexpected

        return _unexpected(request, exc)
    log.warning("database unavailable: %s", type(exc).__name__)
    body = {"type": "https://setia.dev/problems/database-unavailable",
            "title": "Database unavailable", "status": 503,
            "detail": "the database does not answer right now; retry shortly"}
    return JSONResponse(body, status_code=503, media_type=PROBLEM,
                        headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


class _QueueCollector:
    """Outbox lag, deliveries and retries, read from the database at scrape time."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def collect(self) -> Any:
        try:
            figures = deliveries.queue_figures(self.engine, datetime.now(UTC))
        except sa.exc.SQLAlchemyError:
            return
        lag = GaugeMetricFamily("setia_outbox_lag_seconds",
                                "Age of the oldest outbox row not yet dispatched")
        lag.add_metric([], figures["outbox_lag_seconds"])
        yield lag
        due = GaugeMetricFamily("setia_delivery_lag_seconds",
                                "How long the oldest due delivery has waited")
        due.add_metric([], figures["delivery_lag_seconds"])
        yield due
        count = GaugeMetricFamily("setia_deliveries", "Deliveries by channel and status",
                                  labels=["channel", "status"])
        for (channel, status), value in sorted(figures["deliveries"].items()):
            count.add_metric([channel, status], value)
        yield count
        retries = GaugeMetricFamily("setia_delivery_retries",
                                    "Delivery attempts after the first, by channel",
                                    labels=["channel"])
        for channel, value in sorted(figures["retries"].items()):
            retries.add_metric([channel], value)
        yield retries


def install(app: FastAPI) -> None:
    """Everything this module adds, in one call from ``create_app``."""
    engine: sa.Engine = app.state.engine
    app.add_exception_handler(sa.exc.OperationalError, _database_away)
    app.add_exception_handler(sa.exc.InterfaceError, _database_away)
    queue = CollectorRegistry(auto_describe=False)
    queue.register(_QueueCollector(engine))

    @app.get("/metrics", tags=["operations"], include_in_schema=False)
    async def metrics() -> Response:
        def render() -> bytes:
            if obs.multiprocess_dir():
                from prometheus_client import multiprocess

                registry = CollectorRegistry()
                multiprocess.MultiProcessCollector(registry)
                own = generate_latest(registry)
            else:
                own = generate_latest(REGISTRY)
            return own + generate_latest(queue)

        return Response(await run_in_threadpool(render), media_type=CONTENT_TYPE_LATEST)

    app.include_router(router)


def _now() -> datetime:
    return datetime.now(UTC)


@router.post(base + "/webhooks", tags=["webhooks"], status_code=201,
             openapi_extra=WEBHOOK_BODY, responses=PROBLEM_RESPONSES)
async def post_webhook(program: str, request: Request,
                       caller: Caller = Depends(require("admin"))) -> JSONResponse:
    """Register a webhook endpoint: ``{"url", "types"?}``; answers its secret once."""
    from setia.entrypoints.api.app import read_body

    caller.check_program(program)
    body = await read_body(request)
    from setia.domain.errors import InvalidField

    if not isinstance(body, dict) or not set(body) <= {"url", "types"}:
        raise InvalidField('the body must be {"url": ..., "types": [...]}', field="(body)")
    engine = request.app.state.engine
    result = await run_in_threadpool(deliveries.add_endpoint, engine, program, body.get("url"),
                                     body.get("types"), _now())
    return JSONResponse(result, status_code=201)


@router.get(base + "/webhooks", tags=["webhooks"], responses=PROBLEM_RESPONSES)
async def get_webhooks(program: str, request: Request,
                       caller: Caller = Depends(require("admin"))) -> dict[str, Any]:
    caller.check_program(program)
    found = await run_in_threadpool(deliveries.list_endpoints, request.app.state.engine, program)
    return {"webhooks": found}


@router.delete(base + "/webhooks/{webhook}", tags=["webhooks"], status_code=204,
               responses=PROBLEM_RESPONSES)
async def delete_webhook(program: str, webhook: str, request: Request,
                         caller: Caller = Depends(require("admin"))) -> None:
    """Stop a webhook endpoint: nothing more is sent to it; 404 if it is unknown or
    stopped already."""
    caller.check_program(program)
    await run_in_threadpool(deliveries.remove_endpoint, request.app.state.engine, program,
                            webhook, _now())


@router.get(base + "/dead-letters", tags=["webhooks"], responses=PROBLEM_RESPONSES)
async def get_dead_letters(program: str, request: Request,
                           caller: Caller = Depends(require("admin"))) -> dict[str, Any]:
    caller.check_program(program)
    found = await run_in_threadpool(deliveries.dead_letters, request.app.state.engine, program)
    return {"deliveries": found}


@router.post(base + "/dead-letters/replay", tags=["webhooks"], openapi_extra=REPLAY_BODY,
             responses=PROBLEM_RESPONSES)
async def post_replay(program: str, request: Request, key: str = IdempotencyKey,
                      caller: Caller = Depends(require("admin"))) -> dict[str, Any]:
    """Queue dead deliveries again: ``{"ids": [...]}`` or ``{}`` for all of them."""
    from setia.domain.errors import InvalidField
    from setia.entrypoints.api.app import read_optional_body

    caller.check_program(program)
    # an empty body is {} (all of them) only once it has been read: a chunked body has
    # no Content-Length
    body = await read_optional_body(request)
    if not isinstance(body, dict) or not set(body) <= {"ids"}:
        raise InvalidField('the body must be {"ids": [...]} or {}', field="(body)")
    return await run_in_threadpool(deliveries.replay, request.app.state.engine, program,
                                   body.get("ids"), _now(), key)
