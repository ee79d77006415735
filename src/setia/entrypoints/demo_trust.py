"""The demo's part for operations and trust: a portal token for one member, that member's
data export, and the audit log those admin actions wrote. Called once from demo.py."""

from __future__ import annotations

import sqlalchemy as sa
from rich.console import Console
from rich.table import Table

from setia.adapters.db import tables as t
from setia.service import audit, member_tokens, privacy

PROGRAM_ID = "kopi-setia"


def show_trust(engine: sa.Engine, console: Console) -> None:
    with engine.connect() as conn:
        member = conn.execute(sa.select(t.members.c.id).where(
            t.members.c.program_id == PROGRAM_ID).order_by(t.members.c.pk).limit(1)).scalar()
    if member is None:
        return
    issued = member_tokens.issue(engine, PROGRAM_ID, str(member), days=30)
    data = privacy.export_member(engine, PROGRAM_ID, str(member))
    table = Table(title="operations and trust")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row(f"portal token for {member} (GET /v1/me)", f"{issued['token_id']}, 30 days")
    table.add_row(f"export of {member}: journal lines", f"{len(data['journal']):,}")
    table.add_row(f"export of {member}: events", f"{len(data['events']):,}")
    table.add_row("audit log rows", f"{len(audit.entries(engine, PROGRAM_ID, limit=500)):,}")
    console.print(table)
