"""HTTP security: rate limits per API key and per client IP (429 with Retry-After),
security headers on every response, and a logging filter that keeps secrets and
personal data out of logs.

Rate limits use the ``limits`` library (sliding-window counters). Where their state
lives is ``SETIA_RATE_LIMIT_STORAGE``, a ``limits`` storage URI: ``memory://`` (the
default: per process) or a shared store such as ``redis://host:6379/0`` so that several
API processes and hosts count together (docs/decisions/rate-limits.md). Redis URIs are
served by the ``redis`` package (installed with Setia, as ``limits[redis]``); a store
that does not answer lets requests through and logs a warning, at most once a minute.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import time
from typing import Any

from limits import parse
from limits.aio import strategies
from limits.storage import storage_from_string
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("setia.api")
DEFAULT_PER_KEY = "1000/second"
DEFAULT_PER_IP = "1000/second"
EXEMPT_PATHS = frozenset({"/health", "/ready", "/metrics"})
PROBLEM = b"application/problem+json"
REDIS_SCHEMES = ("redis", "rediss", "redis+unix", "redis+sentinel", "redis+cluster")
# How long a request waits for the shared store before it is let through unlimited.
STORE_TIMEOUT_SECONDS = 0.5
STORE_WARNING_SECONDS = 60.0


def rate_limit_storage(uri: str) -> Any:
    """The asyncio ``limits`` storage for a URI; Redis through the ``redis`` package
    (``limits[redis]``) with bounded connect and read timeouts, unless the URI's query
    sets its own (``?socket_timeout=2``)."""
    uri = uri.strip()
    uri = uri if uri.startswith("async+") else f"async+{uri}"
    options: dict[str, Any] = {}
    if uri.removeprefix("async+").split("://", 1)[0] in REDIS_SCHEMES:
        options = {"implementation": "redispy", "socket_connect_timeout":
                   STORE_TIMEOUT_SECONDS, "socket_timeout": STORE_TIMEOUT_SECONDS}
    return storage_from_string(uri, **options)


def _limit(env: str, default: str) -> Any:
    value = os.environ.get(env, default).strip()
    if value.lower() in ("", "off", "none"):
        return None
    return parse(value)


def _caller_key(headers: list[tuple[bytes, bytes]]) -> str | None:
    """What the per-key limit counts by: the public id of an API key or member token
    (``sk_<id>_...``, ``smt_<id>_...``); a digest for any other bearer value. Never the
    secret itself."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, credential = value.decode("latin-1").partition(" ")
            credential = credential.strip()
            if scheme.lower() != "bearer" or not credential:
                return None
            parts = credential.split("_")
            if len(parts) >= 3 and parts[0] in ("sk", "smt"):
                return f"{parts[0]}:{parts[1][:32]}"
            return "h:" + hashlib.sha256(credential.encode()).hexdigest()[:24]
    return None


class RateLimits:
    """A plain ASGI middleware: the per-IP limit counts every request from a client
    address, the per-key limit every request that presents a bearer credential."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.per_key = _limit("SETIA_RATE_LIMIT_PER_KEY", DEFAULT_PER_KEY)
        self.per_ip = _limit("SETIA_RATE_LIMIT_PER_IP", DEFAULT_PER_IP)
        self.storage = rate_limit_storage(os.environ.get("SETIA_RATE_LIMIT_STORAGE",
                                                         "memory://"))
        self.limiter = strategies.SlidingWindowCounterRateLimiter(self.storage)
        self._warned_at: float | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        checks = []
        if self.per_ip is not None:
            client = scope.get("client")
            checks.append((self.per_ip, "ip", client[0] if client else "unknown"))
        if self.per_key is not None:
            key = _caller_key(scope.get("headers", []))
            if key is not None:
                checks.append((self.per_key, "key", key))
        for limit, kind, who in checks:
            try:
                allowed = await self.limiter.hit(limit, kind, who)
                stats = None if allowed else await self.limiter.get_window_stats(
                    limit, kind, who)
            except Exception as exc:  # noqa: BLE001 - the store is down: fail open, say so
                self._store_failed(exc)
                break
            if stats is not None:
                retry_after = max(1, math.ceil(stats.reset_time - time.time()))
                await _too_many(send, kind, str(limit), retry_after)
                return
        await self.app(scope, receive, send)

    def _store_failed(self, exc: Exception) -> None:
        """A rate-limit store that does not answer must not take the API down with it:
        the request goes through unlimited, and a warning is logged once a minute."""
        now = time.monotonic()
        if self._warned_at is None or now - self._warned_at >= STORE_WARNING_SECONDS:
            self._warned_at = now
            log.warning("rate-limit store unavailable, requests are not limited: %s",
                        f"{type(exc).__name__}: {exc}"[:300])


async def _too_many(send: Send, kind: str, limit: str, retry_after: int) -> None:
    who = "API key" if kind == "key" else "client address"
    body = json.dumps({
        "type": "https://setia.dev/problems/rate-limited",
        "title": "Too many requests",
        "status": 429,
        "detail": f"this {who} is over its limit of {limit}; retry after {retry_after} s",
        "retry_after": retry_after,
    }).encode()
    await send({"type": "http.response.start", "status": 429, "headers": [
        (b"content-type", PROBLEM), (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(retry_after).encode()),
        *SECURITY_HEADERS, (b"content-security-policy", API_CSP),
    ]})
    await send({"type": "http.response.body", "body": body})


SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), payment=()"),
    (b"strict-transport-security", b"max-age=31536000; includeSubDomains"),
]
API_CSP = b"default-src 'none'; frame-ancestors 'none'"
PAGE_CSP = (b"default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
            b"script-src 'self'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'")
# The interactive API docs load Swagger UI / ReDoc from their CDN: no CSP there.
NO_CSP_PATHS = ("/docs", "/redoc")


class SecurityHeaders:
    """Adds the security headers to every HTTP response (pages get a page CSP, everything
    else ``default-src 'none'``); a header the app set itself is left as it is."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                for name, value in SECURITY_HEADERS:
                    if name not in present:
                        headers.append((name, value))
                if b"content-security-policy" not in present and not path.startswith(
                        NO_CSP_PATHS):
                    html = any(name.lower() == b"content-type" and value.startswith(b"text/html")
                               for name, value in headers)
                    headers.append((b"content-security-policy", PAGE_CSP if html else API_CSP))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


# -- logs ------------------------------------------------------------------------------

_REDACTIONS = [
    (re.compile(r"\b(sk|smt)_([0-9a-f]{6,32})_[A-Za-z0-9_\-]+"), r"\1_\2_[redacted]"),
    (re.compile(r"(?i)\b(bearer)\s+[^\s'\",]+"), r"\1 [redacted]"),
    (re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}"), "[email]"),
    (re.compile(r"(?<![\w.])\+?\d[\d ()\-]{7,}\d(?![\w.])"), "[phone]"),
    # SQLAlchemy errors append the statement's parameters: names, emails, payloads.
    (re.compile(r"\[parameters: .*?\](?=\s*\n|\s*\(Background|$)", re.S), "[parameters: redacted]"),
]


def redact(text: str) -> str:
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    secret = os.environ.get("SETIA_ADMIN_KEY")
    if secret and len(secret) >= 8:
        text = text.replace(secret, "[redacted]")
    return text


class RedactSecrets(logging.Filter):
    """Rewrites each record's message (and exception text) with secrets and personal data
    replaced: API keys and member tokens, bearer credentials, email addresses, phone
    numbers, SQL parameters and the admin key from the environment."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is logged as it is
            return True
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.exc_info:
            record.exc_info = None  # formatted (and redacted) above
        return True


_FILTER = RedactSecrets()


def install_log_redaction() -> None:
    """Put the filter on every handler there is now (root and uvicorn's) and on the
    loggers that write requests and errors, so records are redacted wherever they go."""
    names = ["", "uvicorn", "uvicorn.error", "uvicorn.access", "setia", "setia.api",
             "setia.scheduler", "sqlalchemy", "sqlalchemy.engine"]
    for name in names:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
        for handler in logger.handlers:
            if _FILTER not in handler.filters:
                handler.addFilter(_FILTER)
