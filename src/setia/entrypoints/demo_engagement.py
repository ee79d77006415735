"""The demo's campaigns, stamp cards and paid memberships (docs/engagement.md).

The simulated 2027 runs through the stamp cards and the birthday and anniversary
vouchers of examples/programs/kopi-setia.yaml. The points campaigns are dated 2028
so that 2027's balances stay as the README tour expects; after it, a short "2028
campaign season" runs: the café's most frequent members buy Kopi Setia Plus on
2 January, then members shop during Chinese New Year (a budget that runs out) and
Hari Raya (a multiplier with a hold-out). Deterministic; the same ids and keys on a
rebuilt demo answer the first results, so nothing is counted twice.
"""

from __future__ import annotations

import random
from collections.abc import Callable
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
from setia.service.events import ingest_event

PLAN = "kopi-plus"
BUYERS = 12
SEASON_PURCHASES = 150


def engagement_demo(engine: sa.Engine, console: Console, program_id: str, year: int) -> None:
    tz = ZoneInfo("Asia/Kuala_Lumpur")
    season = year + 1
    bought_at = datetime(season, 1, 2, 10, 0, tzinfo=tz)
    with engine.connect() as conn:
        ids = list(conn.execute(sa.select(t.members.c.id, t.members.c.purchases)
                                .where(t.members.c.program_id == program_id)
                                .order_by(t.members.c.id)).tuples())
    frequent = [m for m, _ in sorted(ids, key=lambda row: (-row[1], row[0]))[:BUYERS]]
    for member_id in frequent:
        memberships.buy(engine, program_id, member_id, {"plan": PLAN}, f"demo-plus-{member_id}",
                        clock=lambda: bought_at)
    rng = random.Random(season)
    members = [m for m, _ in ids]
    days = [(1, 26), (1, 27), (2, 26), (2, 27), (2, 28)]
    for n in range(min(SEASON_PURCHASES, 3 * len(members))):
        month, day = days[n % len(days)]
        member_id = rng.choice(members)
        lattes = rng.randint(1, 3)
        croissants = rng.randint(0, 2)
        lines: list[dict[str, str | int]] = [
            {"sku": "LATTE", "category": "coffee", "quantity": lattes,
             "amount": f"{Decimal('9.50') * lattes:.2f}"}]
        if croissants:
            lines.append({"sku": "CROISSANT", "category": "pastry", "quantity": croissants,
                          "amount": f"{Decimal('6.50') * croissants:.2f}"})
        amount = sum((Decimal(str(line["amount"])) for line in lines), Decimal(0))
        when = datetime(season, month, day, 9 + n % 10, n % 60, tzinfo=tz)
        ingest_event(engine, program_id, {
            "id": f"demo-{season}-{n:04d}", "type": "purchase", "member": member_id,
            "order_id": f"demo-{season}-{n:04d}", "occurred_at": when.isoformat(),
            "amount": f"{amount:.2f}", "currency": "MYR", "store": "kl-01", "channel": "pos",
            "lines": lines}, clock=_at(when))
    console.print(campaign_table(engine, program_id))
    console.print(engagement_table(engine, program_id))


def _at(moment: datetime) -> Callable[[], datetime]:
    return lambda: moment


def campaign_table(engine: sa.Engine, program_id: str) -> Table:
    table = Table(title="campaigns")
    for column in ("campaign", "effect", "members", "Beans", "vouchers", "budget used",
                   "held out"):
        table.add_column(column, justify="left" if column in ("campaign", "effect")
                         else "right")
    for c in list_campaigns(engine, program_id)["campaigns"]:
        budget = "-" if c["budget"] is None else f"{c['budget_used']}/{c['budget']}"
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
