"""The one ASGI layer every HTTP request passes, in this order:

1. the request id: the caller's ``X-Request-ID`` when it is a plain token, otherwise a new
   one; every answer carries it back, and log lines inside the request name it;
2. the rate limits (``security.RateLimiter``), except for /health, /ready and /metrics:
   429 with Retry-After (a credential that proved itself only while its request was
   answered is counted against its key's limit afterwards);
3. a path with a NUL character or an unpaired surrogate names nothing: 404;
4. the live path's routes (``live.py``) answered directly; any other request goes on to
   the application (its router, FastAPI's routes and the web pages);
5. the security headers on every answer (``security.with_security_headers``);
6. one JSON log line and one latency sample per request.

One layer instead of four middlewares: each was a coroutine and a wrapped ``send`` per
request.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from setia.entrypoints import observability as obs
from setia.entrypoints.api.security import (
    EXEMPT_PATHS,
    RateLimiter,
    too_many,
    with_security_headers,
)
from setia.entrypoints.api.wire import RequestHeaders, encodes, problem_response

log = logging.getLogger("setia.http")


def decorate(send: Send, path: str, request_id: tuple[bytes, bytes]) -> Send:
    """``send`` with the security headers and the request id added to the answer."""

    async def send_out(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = with_security_headers(message.get("headers", []), path)
            headers.append(request_id)
            message = {**message, "headers": headers}
        await send(message)

    return send_out


class Front:
    def __init__(self, app: ASGIApp, live: Any = None) -> None:
        self.app = app
        self.live = live  # a live.LiveRoutes, or None: every request goes to the app
        self.limits = RateLimiter()
        self._samples: dict[tuple[str, str, int], Any] = {}  # latency histogram children

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = RequestHeaders(scope["headers"])  # read once for all of the below
        rid = headers.last.get(b"x-request-id", b"").decode("latin-1")  # the last one given
        if not obs.REQUEST_ID.fullmatch(rid):
            rid = uuid.uuid4().hex
        token = obs.request_id.set(rid)
        request_id = (b"x-request-id", rid.encode())
        path: str = scope["path"]
        status = 500
        route = None
        try:
            refused = later = None
            limits = self.limits
            if (limits.per_ip is not None or limits.per_key is not None) \
                    and path not in EXEMPT_PATHS:
                authorization = headers.first.get(b"authorization")
                refused, later = (
                    limits.check_here(scope, authorization) if limits.local is not None
                    else await limits.check_shared(scope, authorization))
            if refused is not None:
                refusal, body = too_many(*refused)
                status = 429
                await send({"type": "http.response.start", "status": 429,
                            "headers": [*refusal, request_id]})
                await send({"type": "http.response.body", "body": body})
            elif "\x00" in path or not encodes(path):
                response = problem_response(404, "not-found", "Not found", "no such resource")
                status = 404
                await response(scope, receive, decorate(send, path, request_id))
            elif self.live is not None and (hit := self.live.match(scope)) is not None:
                route = hit.route
                status = await self.live.handle(hit, scope, receive, send, request_id,
                                                headers)
            else:
                sent = [500]
                outer = decorate(send, path, request_id)

                async def send_out(message: Message) -> None:
                    if message["type"] == "http.response.start":
                        sent[0] = message["status"]
                    await outer(message)

                try:
                    await self.app(scope, receive, send_out)
                finally:
                    status = sent[0]
                    route = getattr(scope.get("route"), "path", None)
            if later is not None:
                await limits.count_later(later)
        finally:
            seconds = time.perf_counter() - started
            self._record(scope["method"], route or "unmatched", status, seconds)
            obs.request_id.reset(token)

    def _record(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        sample = self._samples.get(key)
        if sample is None:
            if len(self._samples) > 10_000:  # methods and statuses are few; a bound anyway
                self._samples.clear()
            sample = self._samples[key] = obs.REQUEST_SECONDS.labels(method, route,
                                                                     str(status))
        sample.observe(seconds)
        if log.isEnabledFor(logging.INFO):
            log.info("request", extra={"method": method, "route": route, "status": status,
                                       "duration_ms": round(seconds * 1000, 2)})
