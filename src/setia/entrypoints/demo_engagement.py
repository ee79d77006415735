"""The demo's campaigns, stamp cards and paid memberships (docs/engagement.md).

The simulated year runs through the campaigns and stamp cards of
examples/programs/kopi-setia.yaml on its own; here the café's most frequent
members buy the Kopi Setia Plus plan on 1 December, and the figures are shown.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from rich.console import Console
from rich.table import Table

from setia.adapters.db import tables as t
from setia.adapters.db import tables_engagement as te
from setia.service import memberships
from setia.service.engagement_views import list_campaigns

PLAN = "kopi-plus"
BUYERS = 12


def engagement_demo(engine: sa.Engine, console: Console, program_id: str, year: int) -> None:
    tz = ZoneInfo("Asia/Kuala_Lumpur")
    bought_at = datetime(year, 12, 1, 10, 0, tzinfo=tz)
    with engine.connect() as conn:
        frequent = list(conn.execute(
            sa.select(t.members.c.id).where(t.members.c.program_id == program_id)
            .order_by(t.members.c.purchases.desc(), t.members.c.id).limit(BUYERS)).scalars())
    for member_id in frequent:  # the same keys on a rebuilt demo answer the first result
        memberships.buy(engine, program_id, member_id, {"plan": PLAN}, f"demo-plus-{member_id}",
                        clock=lambda: bought_at)
    console.print(campaign_table(engine, program_id))
    console.print(engagement_table(engine, program_id))


def campaign_table(engine: sa.Engine, program_id: str) -> Table:
    table = Table(title="campaigns")
    for column in ("campaign", "effect", "members", "Beans", "vouchers", "budget used",
                   "held out"):
        table.add_column(column, justify="left" if column in ("campaign", "effect")
                         else "right")
    for c in list_campaigns(engine, program_id)["campaigns"]:
        budget = "-" if c["budget"] is None else f"{c['budget_used']:,}/{c['budget']:,}"
        table.add_row(c["id"], c["effect"], f"{c['members']:,}", f"{c['points_kept']:,}",
                      f"{c['vouchers']:,}", budget, f"{c['holdouts']:,}")
    return table


def engagement_table(engine: sa.Engine, program_id: str) -> Table:
    m, s = te.membership_purchases, te.stamp_progress
    with engine.connect() as conn:
        sold, revenue = conn.execute(
            sa.select(sa.func.count(), sa.func.sum(m.c.fee)).where(m.c.program == program_id)
        ).one()
        cards = conn.execute(
            sa.select(s.c.card_id, sa.func.count(), sa.func.sum(s.c.completions))
            .where(s.c.program_id == program_id).group_by(s.c.card_id).order_by(s.c.card_id)
        ).all()
    table = Table(title="stamp cards and paid memberships")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for card_id, members, completions in cards:
        table.add_row(f"stamp card {card_id}: members / completed",
                      f"{members:,} / {int(completions or 0):,}")
    table.add_row(f"{PLAN} memberships sold", f"{sold:,}")
    table.add_row("membership fees (MYR)", f"{Decimal(revenue or 0):,.2f}")
    return table
