"""A real ``setia serve`` with the web pages, a real SMTP server (aiosmtpd) that keeps
what it receives, and the programme of the web tests."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from tests.e2e.api_server import SETIA, _wait_for_health, free_port, run_setia, setia_env

# Welcome 50; one point per RM 1 and one more per RM 1 on pastries; no pending days, so
# points are spendable at once; a rolling six-month expiry so lots show an expiry date.
WEB_CAFE: dict[str, Any] = {
    "id": "web-cafe",
    "name": "Web Cafe",
    "currency": "MYR",
    "timezone": "Asia/Kuala_Lumpur",
    "locale": "en",
    "auto_enroll": False,
    "points": {"name": "Beans", "pending_days": 0,
               "expiry": {"policy": "rolling", "months": 6}},
    "earn": [
        {"id": "base", "on": "purchase", "rate": 1},
        {"id": "pastry-bonus", "on": "purchase", "categories": ["pastry"], "rate": 1},
        {"id": "welcome", "on": "signup", "points": 50},
    ],
    "tiers": {"metric": "spend", "window": "calendar_year", "levels": [
        {"id": "member", "name": "Member", "threshold": 0},
        {"id": "gold", "name": "Gold", "threshold": 100, "multiplier": "1.5"},
    ]},
    "rewards": [
        {"id": "free-latte", "name": "Free latte", "cost": 100,
         "voucher": {"free_item": "latte", "valid_days": 30}},
        {"id": "mug", "name": "Mug", "cost": 500, "stock": 5,
         "voucher": {"amount_off": "5.00", "valid_days": 30}},
    ],
    # Growth sections that change nothing for a plain purchase: coupons apply only when a
    # code is given, referrals only to linked members, and the campaigns are over
    # (February 2026), run in November 2027, or pay for reviews.
    "analytics": {"cost_per_point": "0.01"},
    "coupons": [
        {"id": "welcome10", "name": "Welcome 10%", "code": "WELCOME10",
         "discount": {"percent_off": 10, "max_off": "15.00"}, "min_spend": "20.00",
         "per_member": 1},
        {"id": "pastry5", "name": "RM 5 off pastries", "code": "PASTRY5",
         "discount": {"amount_off": "5.00"}, "categories": ["pastry"]},
        {"id": "cny", "name": "Chinese New Year", "discount": {"amount_off": "8.00"},
         "from": "2026-01-01", "until": "2027-12-31", "max_uses": 100},
    ],
    "referrals": {
        "link": "https://web-cafe.example/join?ref={code}",
        "min_purchase": "10.00", "pending_days": 0,
        "referrer": {"points": 100}, "referee": {"points": 40},
    },
    "campaigns": [
        {"id": "cny-2026", "name": "Double Beans for CNY", "from": "2026-02-01",
         "until": "2026-02-28", "multiplier": 2},
        {"id": "double-eleven", "name": "11.11 bonus", "from": "2027-11-01",
         "until": "2027-11-30", "points": 20, "min_amount": "10.00", "budget": 1000,
         "per_member": 40},
        {"id": "review-thanks", "name": "Thanks for the review", "on": "review", "points": 5},
    ],
}
OWNER_PASSWORD = "owner-password-123"
CASHIER_PASSWORD = "cashier-password-123"


@dataclass
class Mailbox:
    """An aiosmtpd handler that keeps every message it is given."""

    messages: list[EmailMessage] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        message = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        with self.arrived:
            self.messages.append(message)
            self.arrived.notify_all()
        return "250 OK"

    def wait_for(self, count: int, timeout: float = 10.0) -> EmailMessage:
        with self.arrived:
            ok = self.arrived.wait_for(lambda: len(self.messages) >= count, timeout=timeout)
        assert ok, f"no email number {count} within {timeout} s"
        return self.messages[count - 1]


def link_in(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    found = re.search(r"https?://\S+/portal/\S+/link/\S+", body.get_content())
    assert found, body.get_content()
    return found.group(0)


@contextmanager
def smtp_server() -> Iterator[tuple[Mailbox, int]]:
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield mailbox, port
    finally:
        controller.stop()


@dataclass
class WebServer:
    base_url: str
    db_url: str
    log_path: Path


@contextmanager
def web_server(db_url: str, log_dir: Path, smtp_port: int) -> Iterator[WebServer]:
    """``setia serve`` on a free port, sending mail to the local SMTP server."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    log_path = log_dir / f"web-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [SETIA, "serve", "--no-scheduler", "--host", "127.0.0.1", "--port", str(port)],
            env=setia_env(db_url, SETIA_SMTP_HOST="127.0.0.1", SETIA_SMTP_PORT=str(smtp_port),
                          SETIA_MAIL_FROM="rewards@web-cafe.test"),
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        _wait_for_health(process, base_url, log_path)
        yield WebServer(base_url, db_url, log_path)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


def create_user(db_url: str, username: str, role: str, password: str) -> None:
    result = subprocess.run(
        [SETIA, "users", "create", username, "--role", role, "--password-stdin"],
        env=setia_env(db_url), input=password + "\n", capture_output=True, text=True,
        timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{role} {username} created"


def load_programme(db_url: str, directory: Path) -> None:
    import json

    path = directory / "web-cafe.json"
    path.write_text(json.dumps(WEB_CAFE))
    result = run_setia(db_url, "program", "load", str(path))
    assert result.returncode == 0, result.stderr


__all__ = ["time"]
