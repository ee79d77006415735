"""HTTP security: rate limits per API key and per client IP (429 with Retry-After),
security headers on every response, and a logging filter that keeps secrets and
personal data out of logs.

The per-key limit counts only requests whose credential proved itself (its secret was
checked): a stranger who knows a key's public id (``sk_<id>_...``) but not its secret
must not spend that key's limit. What proved itself is known without a query, from the
caches the authentication keeps anyway (``keys.authenticate_without_database``, and
``note_verified_token`` for member tokens); a credential not in them yet is counted once
its request has been answered, if it proved itself then.

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
from starlette.types import Scope

from setia.entrypoints.api.auth import bearer_credential
from setia.service.keys import CACHE_SECONDS, Principal, authenticate_without_database

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


def _caller_key(authorization: bytes | None) -> tuple[str, str] | None:
    """What the per-key limit counts by, for a request's (first) Authorization header, and
    the credential it carries: the public id of an API key or member token (``sk_<id>_...``,
    ``smt_<id>_...``); a digest for any other bearer value. Never the secret itself."""
    if authorization is None:
        return None
    found = _caller_keys.get(authorization)
    if found is None:
        if len(_caller_keys) >= 1024:
            _caller_keys.clear()
        found = _caller_keys[authorization] = _caller_key_of(authorization)
    return found or None


# Authorization value -> (its key, its credential); () for a header without a credential
_caller_keys: dict[bytes, tuple[str, str] | tuple[()]] = {}


def _caller_key_of(value: bytes) -> tuple[str, str] | tuple[()]:
    credential = bearer_credential(value.decode("latin-1"))
    if credential is None:
        return ()
    parts = credential.split("_")
    if len(parts) >= 3 and parts[0] in ("sk", "smt"):
        return f"{parts[0]}:{parts[1][:32]}", credential
    return "h:" + hashlib.sha256(credential.encode()).hexdigest()[:24], credential


# credential -> until when (time.monotonic()) it counts as proven: as long as the
# authentication caches trust it. A key or token revoked meanwhile is counted a while
# longer against its own limit, which harms nobody (its requests are refused anyway).
_proven: dict[str, float] = {}


def _remember(credential: str, now: float) -> None:
    if len(_proven) >= 10_000:
        _proven.clear()
    _proven[credential] = now + CACHE_SECONDS


def note_verified_token(token: str) -> None:
    """Say that a member token has just proven itself (``trust.member_caller``)."""
    _remember(token, time.monotonic())


def verified(credential: str) -> bool:
    """Whether this exact credential, secret and all, proved itself in this process within
    the last 30 s; no query."""
    now = time.monotonic()
    until = _proven.get(credential)
    if until is not None and until > now:
        return True
    if isinstance(authenticate_without_database(credential), Principal):
        _remember(credential, now)
        return True
    return False


class MemoryWindows:
    """The sliding-window counters of ``limits``' memory storage, kept in this process
    without its asyncio locks, tasks and string keys: the event loop runs one request's
    check at a time, so a plain dict is enough.

    The same arithmetic as ``limits``' ``SlidingWindowCounterRateLimiter``: windows of the
    limit's length aligned on multiples of it; a hit is allowed while
    ``floor(previous * (time left in the current window / length) + current) + 1`` stays
    within the limit; a refusal answers when the count next drops (its window stats)."""

    SWEEP_SECONDS = 60.0

    def __init__(self) -> None:
        # (kind, who, amount, length) -> [window index, previous count, current count]
        self.windows: dict[tuple[str, str, int, int], list[int]] = {}
        self._next_sweep = time.time() + self.SWEEP_SECONDS

    def hit(self, kind: str, who: str, amount: int, length: int, now: float) -> float | None:
        """Count one hit; ``None`` when allowed, else the seconds until one would be."""
        if now >= self._next_sweep:
            self._sweep(now)
        index = int(now / length)
        key = (kind, who, amount, length)
        state = self.windows.get(key)
        if state is None:
            state = self.windows[key] = [index, 0, 0]
        elif state[0] != index:
            state[1] = state[2] if state[0] == index - 1 else 0
            state[2] = 0
            state[0] = index
        previous, current = state[1], state[2]
        left = (1 - ((now / length) % 1)) * length  # of the current window
        if math.floor(previous * left / length + current) + 1 > amount:
            if not (previous or current):
                return 0.0
            return min(left % (length / previous) if previous else math.inf,
                       (left + length) % length if current else math.inf)
        state[2] = current + 1
        return None

    def _sweep(self, now: float) -> None:
        """Forget counters whose two windows have both ended."""
        self._next_sweep = now + self.SWEEP_SECONDS
        stale = [key for key, state in self.windows.items()
                 if state[0] < int(now / key[3]) - 1]
        for key in stale:
            del self.windows[key]


class RateLimiter:
    """The per-IP limit counts every request from a client address, the per-key limit
    every request whose bearer credential proved itself (module docstring). ``memory://``
    counts in this process (``MemoryWindows``); any other storage goes through ``limits``
    (Redis).

    ``check_here`` and ``check_shared`` answer ``(refusal, later)``: the refusal
    ``(kind, limit, retry_after)`` or None, and the ``(key, credential)`` to pass to
    ``count_later`` once the request has been answered (its credential not proven yet),
    or None."""

    def __init__(self) -> None:
        self.per_key = _limit("SETIA_RATE_LIMIT_PER_KEY", DEFAULT_PER_KEY)
        self.per_ip = _limit("SETIA_RATE_LIMIT_PER_IP", DEFAULT_PER_IP)
        uri = os.environ.get("SETIA_RATE_LIMIT_STORAGE", "memory://").strip()
        self.local: MemoryWindows | None = None
        self.limiter: Any = None
        if uri in ("memory://", "async+memory://"):
            self.local = MemoryWindows()
        else:
            self.storage = rate_limit_storage(uri)
            self.limiter = strategies.SlidingWindowCounterRateLimiter(self.storage)
        self._warned_at: float | None = None
        self._sizes = {kind: (limit.amount, limit.get_expiry())
                       for kind, limit in (("ip", self.per_ip), ("key", self.per_key))
                       if limit is not None}

    def _checks(self, scope: Scope, authorization: bytes | None
                ) -> tuple[list[tuple[Any, str, str]], tuple[str, str] | None]:
        checks = []
        later = None
        if self.per_ip is not None:
            client = scope.get("client")
            checks.append((self.per_ip, "ip", client[0] if client else "unknown"))
        if self.per_key is not None:
            caller = _caller_key(authorization)
            if caller is not None:
                if verified(caller[1]):
                    checks.append((self.per_key, "key", caller[0]))
                else:
                    later = caller
        return checks, later

    def check_here(self, scope: Scope, authorization: bytes | None
                   ) -> tuple[tuple[str, str, int] | None, tuple[str, str] | None]:
        """With the in-process store: the refusal and what to count later (class
        docstring). ``authorization``: the request's first Authorization header, if any."""
        assert self.local is not None
        now = time.time()
        checks, later = self._checks(scope, authorization)
        for limit, kind, who in checks:
            amount, length = self._sizes[kind]
            wait = self.local.hit(kind, who, amount, length, now)
            if wait is not None:
                return (kind, str(limit), max(1, math.ceil(wait))), None
        return None, later

    async def check_shared(self, scope: Scope, authorization: bytes | None
                           ) -> tuple[tuple[str, str, int] | None, tuple[str, str] | None]:
        """With a shared store (``limits``): the refusal and what to count later (class
        docstring); a store that does not answer lets the request through."""
        checks, later = self._checks(scope, authorization)
        for limit, kind, who in checks:
            try:
                allowed = await self.limiter.hit(limit, kind, who)
                stats = None if allowed else await self.limiter.get_window_stats(
                    limit, kind, who)
            except Exception as exc:  # noqa: BLE001 - the store is down: fail open, say so
                self._store_failed(exc)
                return None, None
            if stats is not None:
                return (kind, str(limit), max(1, math.ceil(stats.reset_time - time.time()))), \
                    None
        return None, later

    async def count_later(self, caller: tuple[str, str]) -> None:
        """Count an answered request against its key's limit if its credential proved
        itself while it was answered (the first request of a key the caches did not hold);
        a wrong secret is never counted here."""
        if self.per_key is None or not verified(caller[1]):
            return
        if self.local is not None:
            amount, length = self._sizes["key"]
            self.local.hit("key", caller[0], amount, length, time.time())
            return
        try:
            await self.limiter.hit(self.per_key, "key", caller[0])
        except Exception as exc:  # noqa: BLE001 - the store is down: fail open, say so
            self._store_failed(exc)

    def _store_failed(self, exc: Exception) -> None:
        """A rate-limit store that does not answer must not take the API down with it:
        the request goes through unlimited, and a warning is logged once a minute."""
        now = time.monotonic()
        if self._warned_at is None or now - self._warned_at >= STORE_WARNING_SECONDS:
            self._warned_at = now
            log.warning("rate-limit store unavailable, requests are not limited: %s",
                        f"{type(exc).__name__}: {exc}"[:300])


def too_many(kind: str, limit: str, retry_after: int) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The 429 answer's headers (security headers included) and body."""
    who = "API key" if kind == "key" else "client address"
    body = json.dumps({
        "type": "https://setia.dev/problems/rate-limited",
        "title": "Too many requests",
        "status": 429,
        "detail": f"this {who} is over its limit of {limit}; retry after {retry_after} s",
        "retry_after": retry_after,
    }).encode()
    return [
        (b"content-type", PROBLEM), (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(retry_after).encode()),
        *SECURITY_HEADERS, (b"content-security-policy", API_CSP),
    ], body


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


def with_security_headers(headers: list[tuple[bytes, bytes]], path: str
                          ) -> list[tuple[bytes, bytes]]:
    """A response's headers with the security headers it lacks (pages get a page CSP,
    everything else ``default-src 'none'``); a header the app set itself is left as it
    is."""
    headers = list(headers)
    present = {name.lower() for name, _ in headers}
    for name, value in SECURITY_HEADERS:
        if name not in present:
            headers.append((name, value))
    if b"content-security-policy" not in present and not path.startswith(NO_CSP_PATHS):
        html = any(name.lower() == b"content-type" and value.startswith(b"text/html")
                   for name, value in headers)
        headers.append((b"content-security-policy", PAGE_CSP if html else API_CSP))
    return headers


# -- logs ------------------------------------------------------------------------------

_REDACTIONS = [
    (re.compile(r"\b(sk|smt)_([0-9a-f]{6,32})_[A-Za-z0-9_\-]+"), r"\1_\2_[redacted]"),
    (re.compile(r"(?i)\b(bearer)\s+[^\s'\",]+"), r"\1 [redacted]"),
    (re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}"), "[email]"),
    (re.compile(r"(?<![\w.])\+?\d[\d ()\-]{7,}\d(?![\w.])"), "[phone]"),
    # SQLAlchemy errors append the statement's parameters: names, emails, payloads.
    (re.compile(r"\[parameters: .*?\](?=\s*\n|\s*\(Background|$)", re.S), "[parameters: redacted]"),
]


# Every pattern above needs one of these to match; text without any (most request log
# lines) skips them.
_MAY_NEED_REDACTION = re.compile(r"[_@\d\[]|(?i:bearer)")


def redact(text: str) -> str:
    if _MAY_NEED_REDACTION.search(text):
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
