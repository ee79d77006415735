"""Real receivers for delivery tests: an HTTP server that verifies Standard Webhooks
signatures (and can fail or stall on cue), and an SMTP server (aiosmtpd)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller
from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Received:
    webhook_id: str
    body: dict[str, Any]
    verified: bool
    answered: int
    arrived_at: float = 0.0  # time.monotonic() when the request came in


@dataclass
class WebhookReceiver:
    """``script``: what to do with each next request ("ok", "fail" = HTTP 500, "stall" =
    answer after ``stall_seconds``, "trickle" = a 200 written one byte every
    ``trickle_seconds``, so that no single read waits long); ``default`` once the script
    is used up. With
    ``together`` set, each request waits until that many are in flight at once before it
    is answered (a 503 if they never are, within ``together_seconds``): proof that a
    sender sends in parallel, without timing anything."""

    secret: str = ""
    script: list[str] = field(default_factory=list)
    default: str = "ok"
    stall_seconds: float = 1.5
    trickle_seconds: float = 0.1
    received: list[Received] = field(default_factory=list)
    url: str = ""
    together: int = 0
    together_seconds: float = 10.0
    trickled: int = 0  # trickled answers ended, written whole or not
    cut_off: int = 0  # of those, the ones whose sender hung up before the last byte

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.barrier = threading.Barrier(self.together) if self.together > 1 else None

    def ids(self) -> list[str]:
        with self.lock:
            return [r.webhook_id for r in self.received]

    def trickles_ended(self, count: int, seconds: float = 20.0) -> tuple[int, int]:
        """Wait until ``count`` trickled answers have ended (a wait, judged by what
        happened, not by how long it took); (ended, cut off)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with self.lock:
                if self.trickled >= count:
                    break
            time.sleep(0.05)
        with self.lock:
            return self.trickled, self.cut_off


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # listen backlog: a worker sends several webhooks at once


@contextmanager
def webhook_receiver(receiver: WebhookReceiver) -> Iterator[WebhookReceiver]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the http.server API
            arrived_at = time.monotonic()
            raw = self.rfile.read(int(self.headers.get("content-length", "0")))
            headers = {k.lower(): v for k, v in self.headers.items()}
            alone = False
            if receiver.barrier is not None:
                try:
                    receiver.barrier.wait(receiver.together_seconds)
                except threading.BrokenBarrierError:
                    alone = True
            try:
                Webhook(receiver.secret).verify(raw, headers)
                verified = True
            except WebhookVerificationError:
                verified = False
            with receiver.lock:
                action = receiver.script.pop(0) if receiver.script else receiver.default
                status = 200 if action in ("ok", "stall", "trickle") and verified else 500
                if not verified:
                    status = 401
                if alone:
                    status = 503
                receiver.received.append(Received(headers.get("webhook-id", ""),
                                                  json.loads(raw), verified, status,
                                                  arrived_at))
            if action == "stall":
                time.sleep(receiver.stall_seconds)  # longer than the sender waits
            if action == "trickle":
                answer = f"HTTP/1.1 {status} OK\r\nContent-Length: 2\r\n\r\nok".encode()
                cut = False
                try:
                    for byte in answer:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(receiver.trickle_seconds)
                except OSError:
                    cut = True  # the sender gave up
                with receiver.lock:
                    receiver.trickled += 1
                    receiver.cut_off += cut
                self.close_connection = True
                return
            try:
                self.send_response(status)
                self.end_headers()
            except OSError:
                pass  # the sender gave up waiting

        def log_message(self, *args: Any) -> None:
            pass

    server = _Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()


class MailBox:
    """An aiosmtpd handler: keeps accepted messages; refuses the first ``refuse`` with 451."""

    def __init__(self, refuse: int = 0) -> None:
        self.refuse = refuse
        self.messages: list[Message] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        with self.lock:
            if self.refuse > 0:
                self.refuse -= 1
                return "451 4.3.0 try again later"
            self.messages.append(message_from_bytes(envelope.content, policy=policy.default))
        return "250 OK"


@contextmanager
def smtp_server(box: MailBox) -> Iterator[int]:
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield port
    finally:
        controller.stop()
