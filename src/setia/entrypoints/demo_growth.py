"""The demo's January 2028 at Kopi Setia: referrals, coupons, a survey and donations,
all through the real services, after the simulated year (``demo.py`` calls ``build``).

Friends of three regulars enrol with their referral links and make a first
purchase with WELCOME10; one more friend shares an email with her referrer and
waits in the review queue; 14 days later the referrals pay. A batch of 1,000
Chinese New Year codes is generated and a few are used; forty members answer the
visit survey; members with Beans to spare give 100 to a cause. Deterministic for a
seed; cust-0001 (the README tour's member) is left alone.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from rich.console import Console
from rich.table import Table

from setia.adapters.db import tables as t
from setia.domain.errors import SetiaError
from setia.service import coupons, donations, referrals, surveys
from setia.service.events import ingest_event
from setia.service.members import upsert_member
from setia.service.redemptions import redeem

PROGRAM_ID = "kopi-setia"
TZ = ZoneInfo("Asia/Kuala_Lumpur")
JAN = datetime(2028, 1, 3, 10, 0, tzinfo=TZ)


def _clock(moment: datetime) -> Callable[[], datetime]:
    return lambda: moment


def _regulars(engine: sa.Engine, count: int) -> list[tuple[str, int]]:
    """Demo members other than cust-0001, most Beans first: (member id, available)."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(t.members.c.id, t.members.c.available).where(
            t.members.c.program_id == PROGRAM_ID, t.members.c.id.like("cust-%"),
            t.members.c.id != "cust-0001").order_by(t.members.c.available.desc(),
                                                    t.members.c.id).limit(count))
        return [(row.id, int(row.available)) for row in rows]


def build(engine: sa.Engine, console: Console, seed: int = 7) -> None:
    rng = random.Random(seed)
    regulars = _regulars(engine, 40)
    if len(regulars) < 4:
        return
    stats: dict[str, str] = {}

    # Referrals: three friends, each with a first purchase and WELCOME10
    linked = []
    for n, (referrer, _) in enumerate(regulars[:3], start=1):
        code = referrals.code_for(engine, PROGRAM_ID, referrer, _clock(JAN))["code"]
        friend = f"friend-{n:02d}"
        upsert_member(engine, PROGRAM_ID, friend, {"name": f"Friend {n}",
                                                   "email": f"friend{n}@example.com"},
                      _clock(JAN))
        linked.append(referrals.link(engine, PROGRAM_ID, {"code": code, "member": friend,
                                                          "ip": f"198.51.100.{n}"},
                                     f"demo-ref-{n}", _clock(JAN)))
        bought = JAN + timedelta(days=1, hours=n)
        # at the till: the coupon first (RM 2.85 off), then the purchase of what was paid
        coupons.redeem(engine, PROGRAM_ID, {"code": "WELCOME10", "member": friend,
                                            "amount": "28.50",
                                            "order_id": f"demo-friend-order-{n}"},
                       f"demo-welcome-{n}", _clock(bought))
        ingest_event(engine, PROGRAM_ID, {
            "id": f"demo-friend-{n}", "type": "purchase", "member": friend,
            "occurred_at": bought.isoformat(), "order_id": f"demo-friend-order-{n}",
            "amount": "25.65", "store": "kl-01", "channel": "pos",
            "lines": [{"sku": "LATTE", "category": "coffee", "quantity": 3, "amount": "25.65"}]},
            _clock(bought))
    # the same mailbox as the referrer (gmail dots and +tags aside): a guarded referral
    referrer = regulars[3][0]
    upsert_member(engine, PROGRAM_ID, "friend-04", {"email": f"{referrer}@example.com"},
                  _clock(JAN))
    code = referrals.code_for(engine, PROGRAM_ID, referrer, _clock(JAN))["code"]
    referrals.link(engine, PROGRAM_ID, {"code": code, "member": "friend-04"}, "demo-ref-4",
                   _clock(JAN))
    paid = referrals.pay_due(engine, PROGRAM_ID, JAN + timedelta(days=16))
    review = len(referrals.listing(engine, PROGRAM_ID, "review"))
    stats["referrals paid (300 Beans + a latte voucher each)"] = str(paid)
    stats["referrals waiting for review"] = str(review)

    # Coupons: a batch of Chinese New Year codes, five used
    cny = JAN + timedelta(days=20)
    batch = coupons.generate_batch(engine, PROGRAM_ID, "cny-2028", {"count": 1000,
                                                                    "prefix": "CNY"},
                                   "demo-cny-batch", _clock(cny))
    codes = [line.split(",")[0] for line in
             "".join(coupons.export_batch(engine, PROGRAM_ID, batch["id"])).splitlines()[1:]]
    for n, (member, _) in enumerate(regulars[4:9]):
        coupons.redeem(engine, PROGRAM_ID, {"code": codes[n * 7], "member": member,
                                            "amount": "24.00", "order_id": f"demo-cny-{n}"},
                       f"demo-cny-{n}", _clock(cny + timedelta(hours=n)))
    stats["coupon codes generated / used"] = f"{len(codes):,} / 5 (+3 WELCOME10)"

    # Survey: forty answers, scores leaning high
    for n, (member, _) in enumerate(regulars[:40]):
        answered = JAN + timedelta(days=rng.randrange(1, 28), hours=rng.randrange(0, 10))
        surveys.submit(engine, PROGRAM_ID, "visit", {
            "member": member, "submitted_at": answered.isoformat(), "answers": {
                "recommend": rng.choice([10, 10, 9, 9, 9, 8, 8, 7, 6, 4]),
                "taste": rng.choice([5, 5, 4, 4, 3])}}, f"demo-survey-{n}", _clock(answered))
    month = surveys.results(engine, PROGRAM_ID, "visit", "month")["periods"][-1]
    stats[f"survey {month['period']}: NPS / average rating"] = (
        f"{month['nps']} / {month['average_rating']} ({month['responses']} answers)")

    # Donations: members with Beans to spare give 100 to a cause
    for n, (member, available) in enumerate(regulars[:12]):
        if available < 150:
            continue
        reward = "donate-mercy" if n % 3 else "donate-soup-kitchen"
        try:
            redeem(engine, PROGRAM_ID, {"member": member, "reward": reward},
                   f"demo-donate-{n}", _clock(JAN + timedelta(days=25)))
        except SetiaError:
            continue
    for cause in donations.totals(engine, PROGRAM_ID)["causes"]:
        stats[f"donated to {cause['name']}"] = (
            f"{cause['points']:,} Beans = MYR {cause['amount']} ({cause['donors']} donors)")

    table = Table(title="January 2028: referrals, coupons, survey, donations")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, value in stats.items():
        table.add_row(name, value)
    console.print(table)
