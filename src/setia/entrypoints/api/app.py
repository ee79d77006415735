"""The HTTP API (CONTRACT.md section 2): thin handlers over the services.

Every error is an RFC 9457 problem (application/problem+json); no stack trace
reaches a client. Bodies over 1 MiB, malformed JSON and wrong content types
are refused the same way.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import Message, Receive, Scope, Send

from setia.domain.errors import Busy, SetiaError
from setia.entrypoints.api import analytics as analytics_api
from setia.entrypoints.api import ops, schemas, trust
from setia.entrypoints.api import partners as partners_api
from setia.entrypoints.api import store_credit as store_credit_api
from setia.entrypoints.api.auth import READ_SCOPES, STAFF_SCOPES, Caller, require
from setia.entrypoints.api.engagement import router as engagement_router
from setia.entrypoints.api.front import Front, decorate
from setia.entrypoints.api.live import (
    BASE,
    BATCH_PATH,
    EVENTS_PATH,
    HOT_ROUTES,
    MEMBER_PATH,
    EventGroups,
    LiveRoutes,
    Threads,
    answer_batch,
    answer_event,
    thread_count,
    thread_runner,
)
from setia.entrypoints.api.responses import JSONResponse
from setia.entrypoints.api.wire import PROBLEM, parse_body, problem_response, receive_body
from setia.entrypoints.web import install as install_web
from setia.service import (
    activity,
    events,
    members,
    programmes,
    redemptions,
    reversals,
)

log = logging.getLogger("setia.api")
# Off unless set: FastAPI's own OpenTelemetry checks cost every request a few calls even
# with no SDK configured. SETIA_FASTAPI_TELEMETRY=on restores FastAPI's defaults.
TELEMETRY_OFF = {"tracing": False, "metrics": False, "logs": False}


def _setia_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SetiaError)
    headers = (
        {"Retry-After": str(exc.extra.get("retry_after", 1))} if isinstance(exc, Busy) else None
    )
    return JSONResponse(
        exc.to_problem(), status_code=exc.status, media_type=PROBLEM, headers=headers
    )


def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {"loc": ("request",), "msg": "invalid"}
    loc = [str(part) for part in first["loc"] if part not in ("body", "query", "path", "header")]
    field = ".".join(loc) or "request"
    return problem_response(
        422,
        "invalid-field",
        "A field is missing or invalid",
        f"{field}: {first['msg']}",
        field=field,
    )


def _allowed_methods(request: Request) -> str:
    """Every method some route of this path accepts (RFC 9110: Allow lists them all)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches({**request.scope, "method": "OPTIONS"})
        if match != Match.NONE:
            methods.update(getattr(route, "methods", None) or ())
    return ", ".join(sorted(methods - {"HEAD"}))


def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 405:
        return problem_response(405, "method-not-allowed", "Method not allowed",
                                f"{request.method} is not allowed here",
                                headers={"Allow": _allowed_methods(request)})
    slugs = {
        404: "not-found",
        405: "method-not-allowed",
        401: "unauthorized",
        403: "forbidden",
        413: "body-too-large",
        415: "unsupported-media-type",
        400: "malformed-request",
    }
    slug = slugs.get(exc.status_code, "http-error")
    detail = exc.detail if isinstance(exc.detail, str) else slug.replace("-", " ")
    return problem_response(
        exc.status_code,
        slug,
        slug.replace("-", " ").capitalize(),
        detail,
        field=getattr(exc, "field", None),  # wire.MalformedBody: "(body)"
        headers=getattr(exc, "headers", None),
    )


def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error", exc_info=exc)
    return problem_response(
        500,
        "internal-error",
        "Internal error",
        "something went wrong on our side; the request changed nothing",
    )


async def read_body(request: Request, *, yaml_ok: bool = False,
                    unique_keys: bool = False) -> Any:
    """The request's JSON (or, for programmes, YAML) body, within 1 MiB: read and parsed
    as the live path's routes read and parse theirs (``wire``)."""
    raw = await receive_body(_body_source(request), request.headers.get("content-length"))
    return parse_body(raw, request.headers.get("content-type", ""), yaml_ok=yaml_ok,
                      unique_keys=unique_keys)


async def read_optional_body(request: Request, *,
                             absent: Callable[[], Any] = dict) -> Any:
    """``read_body`` for a route whose body may be left out: an empty body stands for
    ``absent()`` (``{}``), whether it came with ``Content-Length: 0``, without the header,
    or chunked. Never ``await request.body()`` first: that reads a body of any size."""
    raw = await receive_body(_body_source(request), request.headers.get("content-length"))
    return parse_body(raw, request.headers.get("content-type", "")) if raw else absent()


def _body_source(request: Request) -> Receive:
    """The request's body as ASGI messages, from Starlette's public ``Request.stream``
    (which also hands a body a route has read already with ``await request.body()``, and
    raises ClientDisconnect when the client goes)."""
    chunks = request.stream()

    async def receive() -> Message:
        try:
            return {"type": "http.request", "body": await anext(chunks), "more_body": True}
        except StopAsyncIteration:
            return {"type": "http.request", "body": b"", "more_body": False}

    return receive


IdempotencyKey = Header(
    alias="Idempotency-Key",
    min_length=1,
    max_length=200,
    description="the caller's key for this write; a replay answers the first result",
)


class SetiaAPI(FastAPI):
    """FastAPI with ``front.Front`` before everything else: every HTTP request passes it
    first, and the live path's requests go no further (FastAPI's and Starlette's own
    layers, its telemetry check, error and body-limit middlewares, are for the rest).
    A middleware added with ``add_middleware`` therefore never sees the live path's
    requests: work every request needs belongs in ``Front``."""

    front: Front | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.front is None or scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self
        await self.front(scope, receive, send)


def create_app(engine: sa.Engine, *, live_routes: bool = True) -> FastAPI:
    """The API and the web pages on ``engine``. ``live_routes=False`` leaves every request
    to FastAPI's routes (``live.py``: the same answers; tests compare the two)."""
    telemetry = (None if os.environ.get("SETIA_FASTAPI_TELEMETRY", "").lower() == "on"
                 else TELEMETRY_OFF)
    app = SetiaAPI(
        default_response_class=JSONResponse,
        title="Setia",
        version="0.1.0",
        description="A loyalty and rewards engine. Errors are RFC 9457 problems.",
        telemetry=telemetry,  # type: ignore[arg-type]
    )
    app.add_exception_handler(SetiaError, _setia_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
    app.state.engine = engine
    # The services' blocking calls run on these threads (auth.require's and the live
    # routes' too), not anyio's worker threads.
    threads = Threads(thread_count(), "setia-api")
    run = app.state.run = thread_runner(threads)
    groups = EventGroups(run, engine)
    app.router.on_shutdown.append(threads.shutdown)
    app.include_router(analytics_api.router)

    trust.install(app)  # member tokens, privacy, fraud, audit, log redaction
    ops.install(app)  # /metrics, webhooks, dead letters, 503s
    live = LiveRoutes(app, engine, run, groups, decorate) if live_routes else None
    # request ids, rate limits, unstorable paths, the live path, security headers, logs
    app.front = Front(super(SetiaAPI, app).__call__, live=live)

    def call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return run(fn, engine, *args, **kwargs)

    @app.get("/health", tags=["operations"])
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", tags=["operations"], responses=schemas.PROBLEM_RESPONSES)
    async def ready() -> Any:
        def ping(engine: sa.Engine) -> None:
            with engine.connect() as conn:
                conn.execute(sa.text("select 1"))

        try:
            await run(ping, engine)
        except Exception:  # noqa: BLE001 - any failure means "not ready"
            return problem_response(
                503,
                "not-ready",
                "Not ready",
                "the database does not answer",
                headers={"Retry-After": "5"},
            )
        return {"status": "ready"}

    stored_schema = {"type": "object", "required": ["id", "version", "created"],
                     "properties": {"id": {"type": "string"}, "version": {"type": "integer"},
                                    "created": {"type": "boolean"}}}

    @app.put(
        BASE,
        tags=["programmes"],
        openapi_extra=schemas.PROGRAMME_BODY,
        responses={
            **schemas.PROBLEM_RESPONSES,
            200: {"description": "unchanged: the current version",
                  "content": {"application/json": {"schema": stored_schema}}},
            201: {"description": "stored as a new version",
                  "content": {"application/json": {"schema": stored_schema}}},
        },
    )
    async def put_programme(
        program: str, request: Request, caller: Caller = Depends(require("admin"))
    ) -> JSONResponse:
        caller.check_program(program)
        document = await read_body(request, yaml_ok=True)
        stored = await call(programmes.store_programme, document, program_id=program)
        return JSONResponse(stored, status_code=201 if stored["created"] else 200)

    @app.get(BASE, tags=["programmes"], responses=schemas.PROBLEM_RESPONSES)
    async def get_programme(
        program: str, caller: Caller = Depends(require(*READ_SCOPES))
    ) -> Any:
        caller.check_program(program)
        return await call(programmes.get_programme, program)

    @app.put(
        MEMBER_PATH,
        tags=["members"],
        openapi_extra=schemas.MEMBER_BODY,
        responses={
            **schemas.PROBLEM_RESPONSES,
            200: schemas.MEMBER_RESPONSE,
            201: schemas.MEMBER_RESPONSE,
        },
    )
    async def put_member(
        program: str,
        member: str,
        request: Request,
        caller: Caller = Depends(require(*STAFF_SCOPES)),
    ) -> JSONResponse:
        caller.check_program(program)
        body = await read_body(request)
        view, created = await call(members.upsert_member, program, member, body)
        return JSONResponse(view, status_code=201 if created else 200)

    @app.get(
        MEMBER_PATH,
        tags=["members"],
        responses={**schemas.PROBLEM_RESPONSES, 200: schemas.MEMBER_RESPONSE},
    )
    async def get_member(
        program: str, member: str, caller: Caller = Depends(require(*READ_SCOPES))
    ) -> Any:
        caller.check_program(program)
        return JSONResponse(await call(members.get_member, program, member))

    @app.get(
        BASE + "/members/{member}/activity", tags=["members"], responses=schemas.PROBLEM_RESPONSES
    )
    async def get_activity(
        program: str,
        member: str,
        limit: int = Query(50, ge=1, le=activity.MAX_LIMIT),
        cursor: str | None = Query(None, max_length=64),
        caller: Caller = Depends(require(*READ_SCOPES)),
    ) -> Any:
        caller.check_program(program)
        return await call(activity.member_activity, program, member, limit=limit, cursor=cursor)

    @app.post(
        EVENTS_PATH,
        tags=["events"],
        openapi_extra=schemas.EVENT_BODY,
        responses={
            **schemas.PROBLEM_RESPONSES,
            200: schemas.EVENT_RESULT,
            201: schemas.EVENT_RESULT,
        },
    )
    async def post_event(
        program: str, request: Request, caller: Caller = Depends(require(*STAFF_SCOPES))
    ) -> JSONResponse:
        caller.check_program(program)
        result, status = await answer_event(groups, program, await read_body(request))
        return JSONResponse(result, status_code=status)

    @app.post(
        BATCH_PATH,
        tags=["events"],
        openapi_extra=schemas.BATCH_BODY,
        responses=schemas.PROBLEM_RESPONSES,
    )
    async def post_batch(
        program: str, request: Request, caller: Caller = Depends(require(*STAFF_SCOPES))
    ) -> JSONResponse:
        caller.check_program(program)
        return JSONResponse(await answer_batch(run, engine, program, await read_body(request)))

    @app.post(
        BASE + "/simulate",
        tags=["events"],
        openapi_extra=schemas.EVENT_BODY,
        responses={**schemas.PROBLEM_RESPONSES, 200: schemas.EVENT_RESULT},
    )
    async def post_simulate(
        program: str, request: Request, caller: Caller = Depends(require(*STAFF_SCOPES))
    ) -> Any:
        caller.check_program(program)
        body = await read_body(request)
        return await call(events.simulate_event, program, body)

    @app.post(
        BASE + "/redemptions",
        tags=["redemptions"],
        status_code=201,
        openapi_extra=schemas.REDEMPTION_BODY,
        responses={**schemas.PROBLEM_RESPONSES, 201: schemas.REDEMPTION_RESPONSE},
    )
    async def post_redemption(
        program: str,
        request: Request,
        key: str = IdempotencyKey,
        caller: Caller = Depends(require(*STAFF_SCOPES)),
    ) -> Any:
        caller.check_program(program)
        body = await read_body(request)
        return await call(redemptions.redeem, program, body, key)

    @app.post(
        BASE + "/redemptions/{redemption}/capture",
        tags=["redemptions"],
        responses={**schemas.PROBLEM_RESPONSES, 200: schemas.REDEMPTION_RESPONSE},
    )
    async def post_capture(
        program: str,
        redemption: str,
        key: str = IdempotencyKey,
        caller: Caller = Depends(require(*STAFF_SCOPES)),
    ) -> Any:
        caller.check_program(program)
        return await call(redemptions.capture_or_release, program, redemption, "capture", key)

    @app.post(
        BASE + "/redemptions/{redemption}/release",
        tags=["redemptions"],
        responses={**schemas.PROBLEM_RESPONSES, 200: schemas.REDEMPTION_RESPONSE},
    )
    async def post_release(
        program: str,
        redemption: str,
        key: str = IdempotencyKey,
        caller: Caller = Depends(require(*STAFF_SCOPES)),
    ) -> Any:
        caller.check_program(program)
        return await call(redemptions.capture_or_release, program, redemption, "release", key)

    @app.get(BASE + "/vouchers/{code}", tags=["vouchers"], responses=schemas.PROBLEM_RESPONSES)
    async def get_voucher(
        program: str, code: str, caller: Caller = Depends(require(*READ_SCOPES))
    ) -> Any:
        caller.check_program(program)
        return await call(redemptions.check_voucher, program, code)

    @app.post(BASE + "/vouchers/{code}/use", tags=["vouchers"], responses=schemas.PROBLEM_RESPONSES)
    async def post_voucher_use(
        program: str,
        code: str,
        key: str = IdempotencyKey,
        caller: Caller = Depends(require(*STAFF_SCOPES)),
    ) -> Any:
        caller.check_program(program)
        return await call(redemptions.use_voucher, program, code, key)

    @app.post(
        BASE + "/adjustments",
        tags=["adjustments"],
        status_code=201,
        openapi_extra=schemas.ADJUSTMENT_BODY,
        responses=schemas.PROBLEM_RESPONSES,
    )
    async def post_adjustment(
        program: str,
        request: Request,
        key: str = IdempotencyKey,
        caller: Caller = Depends(require("admin")),
    ) -> Any:
        caller.check_program(program)
        body = await read_body(request)
        return await call(redemptions.adjust, program, body, key)

    @app.post(BASE + "/reversals", tags=["adjustments"], status_code=201,
              openapi_extra=schemas.REVERSAL_BODY, responses=schemas.PROBLEM_RESPONSES)
    async def post_reversal(program: str, request: Request, key: str = IdempotencyKey,
                            caller: Caller = Depends(require("admin"))) -> Any:
        caller.check_program(program)
        body = await read_body(request)
        return await call(reversals.reverse, program, body, key)

    install_web(app)  # the web pages: entrypoints/web
    from setia.entrypoints.api import coupons, donations, referrals, surveys  # routers

    for router in (coupons.router, referrals.router, surveys.router, donations.router):
        app.include_router(router, responses=schemas.PROBLEM_RESPONSES)
    app.include_router(engagement_router)
    app.include_router(store_credit_api.router)
    app.include_router(partners_api.router)
    _live_path_first(app, HOT_ROUTES)
    return app


def _live_path_first(app: FastAPI, hot: frozenset[tuple[str, str]]) -> None:
    """Move the live path's routes to the front: a request tries the routes in order, and
    the pages and the other areas' routers add dozens. No other route's path can match
    theirs (no route takes a ``:path`` parameter), so the order changes nothing else."""
    def rank(route: Any) -> int:
        methods = getattr(route, "methods", None) or ()
        return 0 if any((method, getattr(route, "path", None)) in hot for method in methods) else 1

    app.router.routes.sort(key=rank)


__all__ = ["create_app", "read_body"]


def app_from_env() -> FastAPI:
    """The application for SETIA_DATABASE_URL: the factory uvicorn's worker processes call."""
    from setia.adapters.db.engine import make_engine
    from setia.entrypoints.observability import configure_logging

    configure_logging()  # each worker process logs JSON lines too
    app = create_app(make_engine())
    freeze_startup_heap()
    hand_over_gil_sooner()
    return app


GIL_SWITCH_SECONDS = 0.0005


def hand_over_gil_sooner() -> None:
    """Ask a thread holding the GIL to hand it over after 0.5 ms instead of Python's 5 ms.
    A batch holds its members' row locks from their read to its commit, and waits on
    PostgreSQL a dozen times meanwhile; each time, the GIL it needs back may be held by
    another request's thread parsing JSON, and every millisecond it waits is one more
    that a concurrent batch of the same members waits for the locks. Measured
    (docs/benchmarks-api.md): batches 4,826-4,861 events/s against 4,165-4,270 with the
    default, in alternating runs; single events and GETs no worse."""
    sys.setswitchinterval(GIL_SWITCH_SECONDS)


def freeze_startup_heap() -> None:
    """Leave the objects made at startup (modules, the app and its routes and schemas,
    SQLAlchemy's tables: about 130,000) out of every later garbage collection. A full
    collection otherwise walks all of them while holding the GIL, which stalls every
    request in the process (tens of ms, hundreds on a busy machine); they live as long
    as the process anyway."""
    gc.collect()
    gc.freeze()
