"""The demo's store credit and partners: after the simulated year (whose quarterly rebates
run-due has credited), a few merchandise purchases with instant cashback, purchases at the
partner Roti Bakar, Beans burned at Kopi Setia, store credit spent at the till, then a table
of store credit and the December settlement between the partners."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from rich.console import Console
from rich.table import Table

from setia.adapters.db import tables as t
from setia.adapters.db.tables_store_credit import credit_accounts
from setia.service import partners, store_credit
from setia.service.events import ingest_event
from setia.service.redemptions import redeem

PROGRAM_ID = "kopi-setia"
TZ = ZoneInfo("Asia/Kuala_Lumpur")
PARTNER_MEMBERS = 5


def run(engine: sa.Engine, console: Console, year: int) -> None:
    """Idempotent: every write carries a fixed event id or idempotency key."""
    december = datetime(year, 12, 31, 18, 0, tzinfo=TZ)
    with engine.connect() as conn:
        members = list(conn.execute(
            sa.select(t.members.c.id).where(t.members.c.program_id == PROGRAM_ID,
                                            t.members.c.available >= 100)
            .order_by(t.members.c.available.desc(), t.members.c.id)
            .limit(PARTNER_MEMBERS)).scalars())
        with_credit = conn.execute(
            sa.select(t.members.c.id).join(credit_accounts,
                                           credit_accounts.c.member_pk == t.members.c.pk)
            .where(t.members.c.program_id == PROGRAM_ID, credit_accounts.c.available >= 100)
            .order_by(credit_accounts.c.available.desc(), t.members.c.id).limit(1)).scalar()
    for n, member in enumerate(members):
        ingest_event(engine, PROGRAM_ID, {
            "id": f"demo-c-merch-{n}", "type": "purchase", "member": member,
            "occurred_at": datetime(year, 12, 29, 15, n, tzinfo=TZ).isoformat(),
            "order_id": f"demo-c-merch-{n}", "partner": "kopi-setia",
            "lines": [{"sku": "TUMBLER", "category": "merch", "amount": "45.00"},
                      {"sku": "LATTE", "category": "coffee", "amount": "9.50"}]},
            clock=lambda: december)
        ingest_event(engine, PROGRAM_ID, {
            "id": f"demo-c-roti-{n}", "type": "purchase", "member": member,
            "occurred_at": datetime(year, 12, 30, 9, n, tzinfo=TZ).isoformat(),
            "order_id": f"demo-c-roti-{n}", "amount": "30.00", "partner": "roti-bakar"},
            clock=lambda: december)
        redeem(engine, PROGRAM_ID, {"member": member, "points": 100, "partner": "kopi-setia"},
               f"demo-c-burn-{n}", clock=lambda: december)
    if with_credit is not None:
        held = store_credit.hold(engine, PROGRAM_ID, {"member": with_credit, "amount": "1.00",
                                                      "reference": "demo till"},
                                 "demo-c-hold", clock=lambda: december)
        store_credit.capture_or_release(engine, PROGRAM_ID, held["id"], "capture", None,
                                        "demo-c-capture", clock=lambda: december)
    console.print(summary(engine, year))


def summary(engine: sa.Engine, year: int) -> Table:
    p = t.postings
    with engine.connect() as conn:
        by_code = dict(conn.execute(
            sa.select(p.c.code, sa.func.sum(p.c.points))
            .where(p.c.program_id == PROGRAM_ID, p.c.asset == "credit:MYR")
            .group_by(p.c.code)).all())
        outstanding = conn.execute(sa.select(sa.func.sum(credit_accounts.c.available))
                                   .where(credit_accounts.c.program_id == PROGRAM_ID)).scalar()
    table = Table(title="Store credit and partners")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, code in (("cashback earned (MYR)", "cashback"), ("rebates (MYR)", "rebate"),
                       ("clawed back by refunds (MYR)", "clawback"),
                       ("spent at the till (MYR)", "capture")):
        table.add_row(name, f"{int(by_code.get(code, 0)) / 100:,.2f}")
    table.add_row("store credit outstanding (MYR)", f"{int(outstanding or 0) / 100:,.2f}")
    view = partners.settlement(engine, PROGRAM_ID, f"{year}-12")
    for row in view["accounts"]:
        table.add_row(f"settlement {view['period']}: {row['account']}",
                      f"{row['position']} {row['amount']}")
    table.add_row(f"settlement {view['period']}: total", view["total"])
    return table
