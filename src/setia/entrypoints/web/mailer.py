"""Sending the member's sign-in link: plain smtplib to SETIA_SMTP_HOST:SETIA_SMTP_PORT.

Without SETIA_SMTP_HOST (a laptop trying the demo) the link is written to the log
instead, with a warning: never run a shop like that.

The portal calls it after its answer has gone (a background task), so a member's answer
takes no longer than a stranger's; an SMTP server that is down or refuses the message is
logged here, never raised (the member asks for another link).
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("setia.web.mail")


def send_signin_link(to: str, link: str, subject: str, body: str) -> None:
    import smtplib  # here, not at start: the server starts faster
    from email.message import EmailMessage

    host = os.environ.get("SETIA_SMTP_HOST")
    if not host:
        log.warning("SETIA_SMTP_HOST is not set; sign-in link for %s: %s", to, link)
        return
    port = os.environ.get("SETIA_SMTP_PORT", "25")
    try:
        message = EmailMessage()
        message["From"] = os.environ.get("SETIA_MAIL_FROM", "setia@localhost")
        message["To"] = to
        message["Subject"] = subject
        message.set_content(f"{body}\n\n{link}\n")
        with smtplib.SMTP(host, int(port), timeout=10) as smtp:
            if os.environ.get("SETIA_SMTP_STARTTLS") == "1":
                smtp.starttls()
            user = os.environ.get("SETIA_SMTP_USER")
            if user:
                smtp.login(user, os.environ.get("SETIA_SMTP_PASSWORD", ""))
            smtp.send_message(message)
    except (OSError, ValueError) as exc:  # smtplib's errors are OSErrors
        log.error("sign-in link not sent: SMTP %s:%s failed (%s: %s)", host, port,
                  type(exc).__name__, exc)
