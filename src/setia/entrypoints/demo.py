"""``setia demo``: a year of the Kopi Setia café, simulated through the real services.

Members enrol over the first half of 2027; purchases (more at weekends),
reviews, refunds, redemptions (one step and held), voucher use and a daily
run-due follow, day by day, then a year-end tier review. Deterministic for a
given seed, and safe to run again: a database that already holds the demo is
only summarised.
"""

from __future__ import annotations

import random
from collections import Counter
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from setia.adapters.db import tables as t
from setia.domain.errors import SetiaError
from setia.entrypoints import demo_growth, demo_store_credit
from setia.entrypoints.demo_analytics import analytics_summary
from setia.entrypoints.demo_engagement import engagement_demo
from setia.entrypoints.demo_trust import show_trust
from setia.entrypoints.web.demo import demo_web
from setia.service.check import check
from setia.service.importer import import_batch
from setia.service.members import upsert_member
from setia.service.programmes import parse_text, store_programme
from setia.service.redemptions import capture_or_release, redeem, use_voucher
from setia.service.run_due import run_due

PROGRAMME_FILE = Path(__file__).resolve().parents[3] / "examples" / "programs" / "kopi-setia.yaml"
PROGRAM_ID = "kopi-setia"
TZ = ZoneInfo("Asia/Kuala_Lumpur")
YEAR = 2027
MENU = [
    ("LATTE", "coffee", "9.50"),
    ("KOPI-SETIA", "coffee", "7.00"),
    ("TEH-TARIK", "tea", "4.50"),
    ("CROISSANT", "pastry", "6.50"),
    ("CAKE", "pastry", "12.00"),
    ("KAYA-TOAST", "food", "5.00"),
    ("NASI-LEMAK", "food", "11.90"),
]
STORES = ["kl-01", "kl-02", "pg-01"]
CITIES = ["Kuala Lumpur", "Penang", "Johor Bahru"]


def _local(day: date, seconds: int) -> datetime:
    return datetime.combine(day, time(0), TZ) + timedelta(seconds=seconds)


class Simulation:
    def __init__(self, engine: sa.Engine, members: int, purchases: int, seed: int) -> None:
        self.engine = engine
        self.rng = random.Random(seed)
        self.member_count = members
        self.purchase_count = purchases
        self.stats: Counter[str] = Counter()
        self.orders: list[tuple[str, str, list[dict[str, Any]]]] = []
        self.enrolled: list[str] = []
        self.weights: dict[str, float] = {}

    def enrol_day(self, member_id: str) -> date:
        return date(YEAR, 1, 1) + timedelta(days=self.rng.randrange(0, 181))

    def plan_members(self) -> dict[date, list[str]]:
        plan: dict[date, list[str]] = {}
        for n in range(1, self.member_count + 1):
            member_id = f"cust-{n:04d}"
            plan.setdefault(self.enrol_day(member_id), []).append(member_id)
            self.weights[member_id] = self.rng.lognormvariate(0, 0.9)
        return plan

    def enrol(self, day: date, member_id: str) -> None:
        birthday = date(
            self.rng.randrange(1960, 2006), self.rng.randrange(1, 13), self.rng.randrange(1, 29)
        )
        at = _local(day, self.rng.randrange(8 * 3600, 20 * 3600))
        upsert_member(
            self.engine,
            PROGRAM_ID,
            member_id,
            {
                "name": f"Customer {member_id[5:]}",
                "birthday": birthday.isoformat(),
                "email": f"{member_id}@example.com",
                "attributes": {"city": self.rng.choice(CITIES)},
                "enrolled_at": at.isoformat(),
            },
            clock=lambda: at,
        )
        self.enrolled.append(member_id)
        self.stats["members"] += 1

    def purchase(self, day: date, number: int) -> dict[str, Any]:
        member_id = self.rng.choices(self.enrolled, [self.weights[m] for m in self.enrolled])[0]
        items = self.rng.sample(MENU, self.rng.choice([1, 1, 2, 2, 3]))
        lines = [
            {"sku": sku, "category": category, "quantity": 1, "amount": price}
            for sku, category, price in items
        ]
        occurred = _local(day, self.rng.randrange(7 * 3600, 21 * 3600))
        order_id = f"ord-{number:06d}"
        self.orders.append((member_id, order_id, lines))
        self.stats["purchases"] += 1
        return {
            "id": f"demo-p-{number:06d}",
            "type": "purchase",
            "member": member_id,
            "occurred_at": occurred.isoformat(),
            "order_id": order_id,
            "currency": "MYR",
            "store": self.rng.choice(STORES),
            "channel": self.rng.choice(["pos", "pos", "app"]),
            "lines": lines,
        }

    def refund(self, day: date, number: int) -> dict[str, Any] | None:
        if not self.orders:
            return None
        member_id, order_id, lines = self.orders.pop(self.rng.randrange(len(self.orders)))
        occurred = _local(day, 21 * 3600 + self.rng.randrange(3000))
        self.stats["refunds"] += 1
        event: dict[str, Any] = {
            "id": f"demo-r-{number:06d}",
            "type": "refund",
            "member": member_id,
            "order_id": order_id,
            "occurred_at": occurred.isoformat(),
        }
        if len(lines) > 1 and self.rng.random() < 0.5:
            event["lines"] = [{"sku": lines[0]["sku"], "amount": lines[0]["amount"]}]
        else:
            event["amount"] = "3.00"
        return event

    def day(self, day: date, purchases_today: int, counter: list[int]) -> None:
        rows: list[tuple[int, Any]] = []
        for _ in range(purchases_today):
            counter[0] += 1
            rows.append((counter[0], self.purchase(day, counter[0])))
        if self.rng.random() < 0.6:
            counter[1] += 1
            refund = self.refund(day, counter[1])
            if refund:
                rows.append((counter[1], refund))
        for _ in range(self.rng.randrange(0, 3)):
            counter[2] += 1
            member_id = self.rng.choice(self.enrolled)
            rows.append(
                (
                    counter[2],
                    {
                        "id": f"demo-v-{counter[2]:06d}",
                        "type": "review",
                        "member": member_id,
                        "occurred_at": _local(day, 20 * 3600).isoformat(),
                    },
                )
            )
            self.stats["reviews"] += 1
        outcome = import_batch(self.engine, PROGRAM_ID, rows, clock=lambda: _local(day, 22 * 3600))
        self.stats["rejected"] += len(outcome["rejected"])
        self.redemptions(day)
        run_due(self.engine, _local(day + timedelta(days=1), 300), PROGRAM_ID)

    def redemptions(self, day: date) -> None:
        now = _local(day, 18 * 3600)
        for attempt in range(6):
            member_id = self.rng.choices(self.enrolled, [self.weights[m] for m in self.enrolled])[0]
            reward = self.rng.choice(
                ["free-latte", "free-latte", "ten-percent-off", "rm10-off", "tumbler-2027"]
            )
            key = f"demo-{day.isoformat()}-{attempt}"
            hold = self.rng.random() < 0.2
            try:
                made = redeem(
                    self.engine,
                    PROGRAM_ID,
                    {"member": member_id, "reward": reward, "hold": hold},
                    key,
                    clock=lambda: now,
                )
            except SetiaError as exc:
                self.stats[f"declined: {exc.type}"] += 1
                continue
            if hold:
                action = "capture" if self.rng.random() < 0.7 else "release"
                made = capture_or_release(
                    self.engine,
                    PROGRAM_ID,
                    made["id"],
                    action,
                    key + "-" + action,
                    clock=lambda: now,
                )
                self.stats[f"holds {action}d"] += 1
                if action == "release":
                    continue
            self.stats["redemptions"] += 1
            if made["voucher"] and self.rng.random() < 0.8:
                use_voucher(
                    self.engine,
                    PROGRAM_ID,
                    made["voucher"]["code"],
                    key + "-use",
                    clock=lambda: now + timedelta(hours=1),
                )
                self.stats["vouchers used"] += 1

    def run(self, console: Console) -> None:
        plan = self.plan_members()
        days = [date(YEAR, 1, 1) + timedelta(days=n) for n in range(365)]
        weights = [1.6 if d.weekday() >= 5 else 1.0 for d in days]
        scale = self.purchase_count / sum(weights)
        planned = [int(w * scale) for w in weights]
        planned[-1] += self.purchase_count - sum(planned)
        counter = [0, 0, 0]
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as bar:
            task = bar.add_task(f"simulating {YEAR} at Kopi Setia (days)", total=len(days))
            for day, purchases_today in zip(days, planned, strict=True):
                for member_id in plan.get(day, []):
                    self.enrol(day, member_id)
                if self.enrolled:
                    self.day(day, purchases_today if self.enrolled else 0, counter)
                bar.advance(task)
        review = run_due(self.engine, datetime(YEAR + 1, 1, 1, 0, 5, tzinfo=TZ), PROGRAM_ID)
        self.stats["year-end tier changes"] = review.tiers_changed


def already_built(engine: sa.Engine) -> bool:
    with engine.connect() as conn:
        return bool(
            conn.execute(
                sa.select(sa.func.count())
                .select_from(t.events)
                .where(t.events.c.program_id == PROGRAM_ID, t.events.c.id.like("demo-%"))
            ).scalar_one()
        )


def summary(engine: sa.Engine) -> Table:
    report = check(engine)
    totals = report.totals.get(PROGRAM_ID, {})
    table = Table(title="Kopi Setia: a year of loyalty")
    table.add_column("figure")
    table.add_column("value", justify="right")
    with engine.connect() as conn:
        members = conn.execute(sa.select(sa.func.count()).select_from(t.members)).scalar_one()
        orders = conn.execute(
            sa.select(
                sa.func.count(),
                sa.func.sum(t.orders.c.amount_e4),
                sa.func.sum(t.orders.c.refunded_e4),
            )
        ).one()
        by_code = dict(
            conn.execute(
                sa.select(t.postings.c.code, sa.func.sum(t.postings.c.points))
                .where(t.postings.c.asset == "points")
                .group_by(t.postings.c.code)
            ).all()
        )
        tiers = conn.execute(
            sa.select(t.members.c.tier_id, sa.func.count())
            .group_by(t.members.c.tier_id)
            .order_by(t.members.c.tier_id)
        ).all()
        balances = conn.execute(
            sa.select(
                sa.func.sum(t.members.c.available),
                sa.func.sum(t.members.c.pending),
                sa.func.sum(t.members.c.reserved),
            )
        ).one()
        redemptions: dict[str, int] = dict(
            conn.execute(
                sa.select(t.redemptions.c.status, sa.func.count()).group_by(t.redemptions.c.status)
            ).all()
        )
        vouchers = conn.execute(
            sa.select(sa.func.count(), sa.func.count(t.vouchers.c.used_at)).select_from(t.vouchers)
        ).one()
    rows = [
        ("members", f"{members:,}"),
        ("purchases", f"{orders[0]:,}"),
        ("sales (MYR)", f"{(orders[1] or 0) / 10_000:,.2f}"),
        ("refunded (MYR)", f"{(orders[2] or 0) / 10_000:,.2f}"),
        ("Beans earned", f"{by_code.get('earn', 0):,}"),
        ("Beans clawed back by refunds", f"{by_code.get('clawback', 0):,}"),
        ("Beans redeemed", f"{totals.get('redeemed', 0):,}"),
        ("Beans expired", f"{totals.get('expired', 0):,}"),
        (
            "Beans outstanding (available / pending / reserved)",
            f"{balances[0] or 0:,} / {balances[1] or 0:,} / {balances[2] or 0:,}",
        ),
        (
            "redemptions captured / released",
            f"{redemptions.get('captured', 0)} / {redemptions.get('released', 0)}",
        ),
        ("vouchers issued / used", f"{vouchers[0]} / {vouchers[1]}"),
        ("members by tier", ", ".join(f"{tier} {count}" for tier, count in tiers)),
        (
            "journal check",
            "ok: every asset sums to zero" if report.ok else f"{len(report.problems)} problems",
        ),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def run_demo(
    engine: sa.Engine, console: Console, *, members: int, purchases: int, seed: int
) -> None:
    store_programme(
        engine,
        parse_text(PROGRAMME_FILE.read_text(encoding="utf-8")),
        clock=lambda: datetime(YEAR - 1, 12, 1, tzinfo=TZ),
    )
    if already_built(engine):
        console.print("The demo is already built in this database; summarising it.")
    else:
        simulation = Simulation(engine, members, purchases, seed)
        simulation.run(console)
        activity = Table(title="simulated activity")
        activity.add_column("what")
        activity.add_column("count", justify="right")
        for key, value in sorted(simulation.stats.items()):
            activity.add_row(key, f"{value:,}")
        console.print(activity)
        demo_growth.build(engine, console, seed)  # referrals, coupons, survey, donations
        demo_store_credit.run(engine, console, YEAR)
        show_trust(engine, console)
    console.print(summary(engine))
    analytics_summary(engine, console, PROGRAM_ID, YEAR)
    demo_web(engine, console, PROGRAM_ID)  # staff accounts of the web pages
    engagement_demo(engine, console, PROGRAM_ID, YEAR)
