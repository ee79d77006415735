"""Sending one webhook: a JSON body signed per the Standard Webhooks specification
(``webhook-id``, ``webhook-timestamp``, ``webhook-signature``) with the
``standardwebhooks`` package, POSTed with httpx under a bounded timeout."""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from datetime import datetime

import httpx
from standardwebhooks.webhooks import Webhook

TIMEOUT_SECONDS = 10.0
SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    """A fresh endpoint secret, as the specification writes them: whsec_ + base64 of 24
    random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


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
    """POST once; any 2xx is delivered, anything else (or no answer in time) failed."""
    headers = signed_headers(secret, message_id, sent_at, body)
    try:
        response = client.post(url, content=body.encode(), headers=headers, timeout=timeout)
    except httpx.TimeoutException:
        return Outcome(False, f"timeout after {timeout:g} s")
    except httpx.HTTPError as exc:
        return Outcome(False, f"{type(exc).__name__}: {exc}"[:500])
    if 200 <= response.status_code < 300:
        return Outcome(True)
    return Outcome(False, f"HTTP {response.status_code}")
