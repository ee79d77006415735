"""Sending one email through SMTP (standard library ``smtplib``), configured from the
environment: SETIA_SMTP_HOST, SETIA_SMTP_PORT (25), SETIA_SMTP_FROM, optional
SETIA_SMTP_USER / SETIA_SMTP_PASSWORD and SETIA_SMTP_STARTTLS=1."""

from __future__ import annotations

import os
import smtplib
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate

TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class SmtpSettings:
    host: str
    port: int = 25
    sender: str = "Setia <no-reply@localhost>"
    user: str | None = None
    password: str | None = None
    starttls: bool = False
    timeout: float = TIMEOUT_SECONDS


def settings_from_env() -> SmtpSettings | None:
    """The SMTP server to use, or None when SETIA_SMTP_HOST is not set (emails then wait)."""
    host = os.environ.get("SETIA_SMTP_HOST")
    if not host:
        return None
    return SmtpSettings(
        host=host, port=int(os.environ.get("SETIA_SMTP_PORT", "25")),
        sender=os.environ.get("SETIA_SMTP_FROM", SmtpSettings.sender),
        user=os.environ.get("SETIA_SMTP_USER") or None,
        password=os.environ.get("SETIA_SMTP_PASSWORD") or None,
        starttls=os.environ.get("SETIA_SMTP_STARTTLS") == "1",
    )


def build(settings: SmtpSettings, to: str, subject: str, text: str, message_id: str,
          language: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = settings.sender
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=False)
    # Stable per delivery: a retried send carries the same id, so mail systems can dedupe.
    message["Message-ID"] = message_id
    message.set_content(text)
    message["Content-Language"] = language.replace("_", "-")  # after: set_content clears it
    return message


def send(settings: SmtpSettings, message: EmailMessage) -> str | None:
    """Send; None when the server accepted it, else why not (one line)."""
    try:
        with smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout) as smtp:
            if settings.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if settings.user and settings.password:
                smtp.login(settings.user, settings.password)
            refused = smtp.send_message(message)
    except (OSError, smtplib.SMTPException) as exc:
        return f"{type(exc).__name__}: {exc}"[:500]
    if refused:
        return f"refused: {sorted(refused)}"[:500]
    return None
