"""The live path's routes, answered without FastAPI's per-request machinery.

``POST /v1/programs/{program}/events``, ``POST .../events/batch`` and
``GET .../members/{member}`` carry nearly all of a till's traffic. Their FastAPI routes stay
registered as they are (so /openapi.json does not change, and they answer whenever the
live path is off); ``Front`` (front.py) hands a request that one of them would receive to
``LiveRoutes.handle`` instead, which does the same work in plain ASGI:

- the same checks in the same order: the API key (``auth.authorize``, a plain call instead
  of a dependency), the key's programme, the body (``wire.parse_body``: the same size,
  content type, JSON and storable-text rules), then the service call;
- the same answers: the same JSON bodies, status codes and headers, and every error
  answered by the application's own exception handlers (the same problem documents);
- the blocking service call on the application's thread executor (``thread_runner``)
  instead of anyio's worker threads.

What both ways share is written once: the routes' paths (``HOT_ROUTES``, which also puts
their FastAPI routes first in the router), the scopes they accept (``auth.READ_SCOPES``,
``auth.STAFF_SCOPES``), the reading of a body (``wire.receive_body``, ``wire.parse_body``)
and the shape of a batch (``batch_events``). tests/integration/test_api_live_routes.py
sends the same requests to both ways and compares the answers byte for byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import os
import queue
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from setia.domain.errors import InvalidField
from setia.entrypoints.api.auth import READ_SCOPES, STAFF_SCOPES, Runner, authorize
from setia.entrypoints.api.security import API_CSP, SECURITY_HEADERS
from setia.entrypoints.api.wire import RequestHeaders, parse_body, receive_body
from setia.entrypoints.observability import count_results
from setia.service import batch, events, members

# Threads for the live routes' service calls and the API-key lookups (all short: a few
# statements each). More threads than cores mostly add GIL hand-offs: with 16 clients on
# two cores, 6 or 8 threads gave single events a shorter p99 than anyio's 40 in most runs
# and GETs a third shorter (docs/benchmarks-api.md). SETIA_API_THREADS changes it.
THREADS = 8
MAX_THREADS = 256


def thread_count(environ: Mapping[str, str] | None = None) -> int:
    """SETIA_API_THREADS, else ``THREADS``; a value that is not a whole number from 1 to
    ``MAX_THREADS`` is refused with the reason (at startup)."""
    raw = (os.environ if environ is None else environ).get("SETIA_API_THREADS", "").strip()
    if not raw:
        return THREADS
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_THREADS:
        raise ValueError(f"SETIA_API_THREADS must be a whole number from 1 to {MAX_THREADS}, "
                         f"not {raw!r}")
    return int(raw)


# The live path's routes: their FastAPI routes in app.py are declared with these paths.
BASE = "/v1/programs/{program}"
EVENTS_PATH = BASE + "/events"
BATCH_PATH = BASE + "/events/batch"
MEMBER_PATH = BASE + "/members/{member}"
HOT_ROUTES = frozenset({("POST", EVENTS_PATH), ("POST", BATCH_PATH), ("GET", MEMBER_PATH)})


def batch_events(body: Any) -> Any:
    """The events of a batch's body, which must be ``{"events": [...]}`` (the list itself
    is checked by ``batch.ingest_batch``)."""
    if not isinstance(body, dict) or set(body) != {"events"}:
        raise InvalidField('the body must be {"events": [...]}', field="events")
    return body["events"]


class EventGroups:
    """``POST /events`` requests applied in groups: while a group is being applied,
    requests that arrive wait, and the next group takes every one waiting for the same
    programme (up to ``MOST``) into one transaction (``batch.ingest_together``). A request
    that finds the lane free is applied at once and alone, so a single till waits for
    nothing; under load, one transaction and one commit serve many requests instead of one
    each. Each request still gets exactly its own answer: its result, or its own error.

    One lane (``LANES``) while groups go quickly. A group still running after ``STALL``
    seconds (waiting for a member's row lock that an import or a batch holds, say) gives
    its lane up, so that requests for other members do not wait behind it; at most
    ``MAX_LANES`` groups run at once. Groups run in an empty context, not in the context
    of the request that happened to start them. docs/decisions/event-groups.md says why."""

    LANES = 1
    MOST = 64
    STALL = 0.1
    MAX_LANES = 4

    def __init__(self, run: Runner, engine: sa.Engine) -> None:
        self.run = run
        self.engine = engine
        self._waiting: dict[str, list[tuple[Any, asyncio.Future[Any]]]] = {}
        self._busy = 0  # groups being applied
        self._quick = 0  # of those, the ones not yet past STALL
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def ingest(self, program: str, body: Any) -> dict[str, Any]:
        """The event's result, as ``events.ingest_event`` answers it; its error raised."""
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:  # the app driven from another event loop: no queue
            alone: dict[str, Any] = await self.run(events.ingest_event, self.engine,
                                                   program, body)
            return alone
        future: asyncio.Future[Any] = loop.create_future()
        self._waiting.setdefault(program, []).append((body, future))
        self._start()
        result: dict[str, Any] = await future
        return result

    def _start(self) -> None:
        loop = self._loop
        assert loop is not None
        while self._waiting and self._quick < self.LANES and self._busy < self.MAX_LANES:
            program = next(iter(self._waiting))  # the programme waiting longest
            waiting = self._waiting.pop(program)
            if len(waiting) > self.MOST:  # the rest waits again, behind the others
                self._waiting[program] = waiting[self.MOST:]
                waiting = waiting[:self.MOST]
            self._busy += 1
            self._quick += 1
            stalled = [False]
            timer = loop.call_later(self.STALL, self._stalled, stalled)
            task = loop.create_task(self._apply(program, waiting, stalled, timer),
                                    context=contextvars.Context())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _stalled(self, stalled: list[bool]) -> None:
        stalled[0] = True
        self._quick -= 1
        self._start()

    async def _apply(self, program: str, group: list[tuple[Any, asyncio.Future[Any]]],
                     stalled: list[bool], timer: asyncio.TimerHandle) -> None:
        outcomes: list[Any]
        stopped: BaseException | None = None
        try:
            outcomes = await self.run(batch.ingest_together, self.engine, program,
                                      [body for body, _ in group])
        except BaseException as exc:  # noqa: BLE001 - every request of the group answers it
            outcomes = [exc] * len(group)
            stopped = None if isinstance(exc, Exception) else exc  # cancelled: after them
        finally:
            timer.cancel()
            self._busy -= 1
            if not stalled[0]:
                self._quick -= 1
        for (_, future), outcome in zip(group, outcomes, strict=True):
            if future.done():  # its request was cancelled (the client went away)
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
        self._start()
        if stopped is not None:
            raise stopped


async def answer_event(groups: EventGroups, program: str, body: Any
                       ) -> tuple[dict[str, Any], int]:
    """``POST /events``: the service's result and its status (201 when applied, 200 when
    replayed), counted for /metrics."""
    result = await groups.ingest(program, body)
    count_results([result])
    return result, 201 if result["status"] == "applied" else 200


async def answer_batch(run: Runner, engine: sa.Engine, program: str, body: Any
                       ) -> dict[str, Any]:
    """``POST /events/batch``: one result per event, counted for /metrics."""
    results = await run(batch.ingest_batch, engine, program, batch_events(body))
    count_results(results)
    return {"results": results}


class Threads:
    """Threads that run the services' blocking calls for the event loop: at most ``size``,
    started when a call finds none idle, kept for the next. ThreadPoolExecutor's scheme
    without its futures: a call is a plain function put on a queue."""

    def __init__(self, size: int, name: str) -> None:
        self.size = size
        self.name = name
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._idle = 0  # threads waiting for work and not yet promised any
        self._started = 0

    def submit(self, work: Callable[[], None]) -> None:
        with self._lock:
            if self._idle:
                self._idle -= 1  # promised to this call
            elif self._started < self.size:
                self._started += 1
                threading.Thread(target=self._run, args=(self._queue,), daemon=True,
                                 name=f"{self.name}_{self._started}").start()
            self._queue.put(work)

    def _run(self, calls: queue.SimpleQueue[Callable[[], None] | None]) -> None:
        while True:
            work = calls.get()
            if work is None:
                return
            with contextlib.suppress(Exception):  # the event loop is gone; nobody waits
                work()
            with self._lock:
                if calls is self._queue:  # else shut down meanwhile: on to its None
                    self._idle += 1

    def shutdown(self) -> None:
        """Let the threads end once their calls are done; a later call starts new ones."""
        with self._lock:
            calls, started = self._queue, self._started
            self._queue, self._idle, self._started = queue.SimpleQueue(), 0, 0
        for _ in range(started):
            calls.put(None)


def thread_runner(threads: Threads) -> Runner:
    """``await run(fn, *args)``: ``fn`` on one of the threads, in a copy of the caller's
    context (request id, audit actor), as run_in_threadpool does. The thread hands the
    outcome back with one ``call_soon_threadsafe``."""

    def run(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Awaitable[Any]:
        if kwargs:
            fn = functools.partial(fn, **kwargs)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        context = contextvars.copy_context()

        def work() -> None:
            try:
                result = context.run(fn, *args)
            except BaseException as exc:  # noqa: BLE001 - raised again in the caller's task
                loop.call_soon_threadsafe(_settle, future, None, exc)
            else:
                loop.call_soon_threadsafe(_settle, future, result, None)

        threads.submit(work)
        return future

    return run


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.cancelled():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


@dataclass(frozen=True, slots=True)
class Hit:
    """A request one of the live routes answers: which, its route's path, its parameters."""
    kind: str
    route: str
    program: str
    member: str = ""


class LiveRoutes:
    def __init__(self, app: Any, engine: sa.Engine, run: Runner, groups: EventGroups,
                 decorate: Callable[[Send, str, tuple[bytes, bytes]], Send]) -> None:
        self.app = app  # for its exception handlers, looked up as Starlette does
        self.engine = engine
        self.run = run
        self.groups = groups
        self.decorate = decorate  # adds the security headers and the request id

    def match(self, scope: Scope) -> Hit | None:
        """The live route Starlette's router would pick for this request, if any. The live
        routes come first in the router (``create_app``) and their parameters match any
        non-empty segment, so a path of the same shape goes to the same route there."""
        path: str = scope["path"]
        if not path.startswith("/v1/programs/") or scope.get("root_path"):
            return None
        parts = path.split("/")
        count = len(parts)
        method = scope["method"]
        if method == "POST" and parts[3] and parts[4:5] == ["events"]:
            if count == 5:
                return Hit("event", EVENTS_PATH, parts[3])
            if count == 6 and parts[5] == "batch":
                return Hit("batch", BATCH_PATH, parts[3])
        elif (method == "GET" and count == 6 and parts[4] == "members" and parts[3]
              and parts[5]):
            return Hit("member", MEMBER_PATH, parts[3], parts[5])
        return None

    async def handle(self, hit: Hit, scope: Scope, receive: Receive, send: Send,
                     request_id: tuple[bytes, bytes], headers: RequestHeaders) -> int:
        """Answer the request (``headers``: its headers, read by ``Front``); the status
        code sent."""
        try:
            authorization = headers.get(b"authorization") or ""
            if hit.kind == "member":
                caller = await authorize(authorization, READ_SCOPES, self.engine, self.run)
                caller.check_program(hit.program)
                view = await self.run(members.get_member, self.engine, hit.program, hit.member)
                return await self._json(send, request_id, view, 200)
            caller = await authorize(authorization, STAFF_SCOPES, self.engine, self.run)
            caller.check_program(hit.program)
            body = await self._body(headers, receive)
            if hit.kind == "event":
                result, status = await answer_event(self.groups, hit.program, body)
                return await self._json(send, request_id, result, status)
            answer = await answer_batch(self.run, self.engine, hit.program, body)
            return await self._json(send, request_id, answer, 200)
        except Exception as exc:  # noqa: BLE001 - answered by the app's own handlers
            return await self._error(exc, scope, receive, send, request_id)

    @staticmethod
    async def _body(headers: RequestHeaders, receive: Receive) -> Any:
        """The JSON body, read and parsed as ``app.read_body`` reads and parses it."""
        raw = await receive_body(receive, headers.get(b"content-length"))
        return parse_body(raw, headers.get(b"content-type") or "")

    @staticmethod
    async def _json(send: Send, request_id: tuple[bytes, bytes], content: Any,
                    status: int) -> int:
        """The answer as ``responses.JSONResponse`` sends it, with the headers ``Front``
        adds to every answer (the security headers, the request id)."""
        body = orjson.dumps(content)
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-length", str(len(body)).encode("latin-1")),
            (b"content-type", b"application/json"),
            *SECURITY_HEADERS, (b"content-security-policy", API_CSP), request_id]})
        await send({"type": "http.response.body", "body": body})
        return status

    async def _error(self, exc: Exception, scope: Scope, receive: Receive, send: Send,
                     request_id: tuple[bytes, bytes]) -> int:
        """Answer ``exc`` with the handler the application registered for it, found as
        Starlette's exception middleware finds it (by status code, then by class)."""
        handlers = self.app.exception_handlers
        handler = None
        if isinstance(exc, StarletteHTTPException):
            handler = handlers.get(exc.status_code)
        if handler is None:
            handler = next((handlers[cls] for cls in type(exc).__mro__ if cls in handlers),
                           None)
        if handler is None:
            raise exc
        response = handler(Request(scope, receive), exc)
        if asyncio.iscoroutine(response):
            response = await response
        await response(scope, receive, self.decorate(send, scope["path"], request_id))
        return int(response.status_code)
