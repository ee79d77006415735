"""Sending one webhook: a JSON body signed per the Standard Webhooks specification
(``webhook-id``, ``webhook-timestamp``, ``webhook-signature``) with the
``standardwebhooks`` package, POSTed with httpx under a bounded timeout.

httpx's timeouts are per phase (connect, each read, each write): a receiver that
trickles its answer a byte at a time resets them forever. A client made by ``client``
also bounds the whole send: its connections read and write with what is left of the
send's deadline (set by ``send``), so one send takes at most its ``timeout``."""

from __future__ import annotations

import base64
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpcore
import httpx
from standardwebhooks.webhooks import Webhook

TIMEOUT_SECONDS = 10.0
SECRET_PREFIX = "whsec_"

log = logging.getLogger(__name__)


def new_secret() -> str:
    """A fresh endpoint secret, as the specification writes them: whsec_ + base64 of 24
    random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a webhook endpoint, or None when it can: it must parse (httpx,
    as a send would) as http:// or https:// with a host and, if given, a port 1-65535."""
    if any(ch.isspace() or ord(ch) < 32 for ch in url):
        return "must not contain spaces or control characters"
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        return f"is not a valid URL ({exc})"
    if parsed.scheme not in ("http", "https"):
        return "must start with http:// or https://"
    if not parsed.host:
        return "has no host"
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        return "has a port outside 1-65535"
    return None


@dataclass(frozen=True)
class Outcome:
    ok: bool
    error: str | None = None  # why it failed, short: "HTTP 500", "timeout", ...


def signed_headers(secret: str, message_id: str, sent_at: datetime, body: str) -> dict[str, str]:
    signature = Webhook(secret).sign(message_id, sent_at, body)
    return {"webhook-id": message_id, "webhook-timestamp": str(int(sent_at.timestamp())),
            "webhook-signature": signature, "content-type": "application/json",
            "user-agent": "Setia-Webhooks/1"}


def send(client: httpx.Client, url: str, secret: str, message_id: str, sent_at: datetime,
         body: str, timeout: float = TIMEOUT_SECONDS) -> Outcome:
    """POST once; any 2xx is delivered, anything else (or no whole answer within
    ``timeout`` seconds, with a ``client()``) failed. Never raises: whatever goes wrong is
    this attempt's error."""
    outer, _deadline.at = getattr(_deadline, "at", None), time.monotonic() + timeout
    try:
        headers = signed_headers(secret, message_id, sent_at, body)
        response = client.post(url, content=body.encode(), headers=headers, timeout=timeout)
    except httpx.TimeoutException:
        return Outcome(False, f"timeout after {timeout:g} s")
    except Exception as exc:  # noqa: BLE001 - a bad URL or secret too: a failed attempt
        return Outcome(False, f"{type(exc).__name__}: {exc}"[:500])
    finally:
        _deadline.at = outer
    if 200 <= response.status_code < 300:
        return Outcome(True)
    return Outcome(False, f"HTTP {response.status_code}")


def client(timeout: float = TIMEOUT_SECONDS, connections: int = 8) -> httpx.Client:
    """A client for ``send``, with ``connections`` kept alive between sends, that never
    follows redirects and holds each send to its overall deadline. It is httpx's own
    client (proxies from the environment, ``HTTPS_PROXY`` and ``NO_PROXY``, included),
    whose connection pools open their sockets through the deadline backend: httpx takes
    no network backend of its own, so each pool's is set (httpcore keeps it in
    ``_network_backend``; the versions are pinned, and tests/integration/
    test_deliveries.py covers a direct send, a send through a proxy and the deadline)."""
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    try:
        made = httpx.Client(timeout=timeout, follow_redirects=False, limits=limits)
    except (ImportError, ValueError) as exc:
        # A proxy the environment names that httpx cannot use (SOCKS needs an extra
        # package): the worker, which runs run-due too, must still start. Sends go direct,
        # and fail and retry if the receivers are reachable only through that proxy.
        log.warning("webhook proxy from the environment not used: %s", exc)
        made = httpx.Client(timeout=timeout, follow_redirects=False, limits=limits,
                            trust_env=False)
    backend = _DeadlineBackend()
    for transport in [made._transport, *made._mounts.values()]:
        if transport is None:  # NO_PROXY: the default transport's
            continue
        pool = getattr(transport, "_pool", None)
        if pool is None or not hasattr(pool, "_network_backend"):
            raise RuntimeError(f"httpx's {type(transport).__name__} keeps its connection "
                               "pool elsewhere: the webhook deadline cannot be set")
        pool._network_backend = backend
    return made


# -- the overall deadline ---------------------------------------------------------------------

# When the send running on this thread must be over (time.monotonic()), or None. A
# connection is used by one send at a time, on the thread that sends.
_deadline = threading.local()


def _left(timeout: float | None, expired: type[Exception]) -> float | None:
    """The phase's timeout, cut to what is left of this thread's send deadline."""
    at = getattr(_deadline, "at", None)
    if at is None:
        return timeout
    left = at - time.monotonic()
    if left <= 0:  # never 0 to the socket: that would make it non-blocking
        raise expired("the send's overall deadline passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._stream.start_tls(
            ssl_context, server_hostname, _left(timeout, httpcore.ConnectTimeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's own sockets, each read, write and connect bounded by the deadline."""

    def __init__(self) -> None:
        self._backend = httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Any = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._backend.connect_tcp(
            host, port, _left(timeout, httpcore.ConnectTimeout), local_address, socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Any = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._backend.connect_unix_socket(
            path, _left(timeout, httpcore.ConnectTimeout), socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)
