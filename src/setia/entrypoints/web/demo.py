"""The web pages' part of ``setia demo``: an owner and a cashier account to sign in with."""

from __future__ import annotations

import sqlalchemy as sa
from rich.console import Console

from setia.service.staff import create_user, list_users

DEMO_USERS = (("owner", "owner", "kopi-owner-demo"), ("cashier", "cashier", "kopi-cashier-demo"))


def demo_web(engine: sa.Engine, console: Console, program_id: str) -> None:
    """Create the demo's staff accounts (once) and say how to use the pages."""
    existing = {user["username"] for user in list_users(engine)}
    for username, role, password in DEMO_USERS:
        if username not in existing:
            create_user(engine, username, password, role, program_id)
    console.print(
        "Web pages (when served): /staff/login as owner / kopi-owner-demo or cashier / "
        f"kopi-cashier-demo; members sign in at /portal/{program_id}/signin (e.g. "
        "cust-0001@example.com; without SETIA_SMTP_HOST the link is written to the log).",
        markup=False, highlight=False)
