"""Random streams of operations through the real services, compared with a small model.

The model below is written from CONTRACT.md section 1 alone: integer cents, plain
lists of lots, no code shared with setia.domain. After every step each member's
available, pending and reserved balances, tier and expiring points must equal the
model's; a request the model refuses must be refused with the right problem type
and change nothing. At the end the journal must check out and the programme
accounts (issued, redeemed, expired, adjustments) must be exactly the model's,
summing to zero with the member balances.

The programme: MYR, UTC, pending 2 days, lots expire 3 calendar months after they
become available; base 1 point per MYR, +1 per MYR of pastry lines, 20 points for a
first purchase of at least 5.00; gold (x1.5) from 100.00 of spend in a calendar
year; a reward "gift" for 30 points without a voucher.
"""

from __future__ import annotations

import calendar
import itertools
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from setia.adapters.db import tables
from setia.adapters.db.engine import make_engine
from setia.domain.errors import InsufficientPoints, RefundExceedsOrder
from setia.service.check import check
from setia.service.events import ingest_event
from setia.service.members import get_member, upsert_member
from setia.service.redemptions import adjust, capture_or_release, redeem
from setia.service.run_due import run_due
from tests.conftest import assert_journal_ok, load_programme

PID = "prop"
PROGRAMME: dict[str, Any] = {
    "id": PID,
    "name": "Property test programme",
    "currency": "MYR",
    "timezone": "UTC",
    "points": {"pending_days": 2, "expiry": {"policy": "rolling", "months": 3}},
    "earn": [
        {"id": "base", "on": "purchase", "rate": 1},
        {"id": "pastry-bonus", "on": "purchase", "categories": ["pastry"], "rate": 1},
        {"id": "first-purchase", "on": "purchase", "first_purchase": True,
         "min_amount": "5.00", "points": 20},
    ],
    "tiers": {
        "metric": "spend",
        "window": "calendar_year",
        "levels": [
            {"id": "member", "name": "Member", "threshold": 0},
            {"id": "gold", "name": "Gold", "threshold": 100, "multiplier": 1.5},
        ],
    },
    "rewards": [{"id": "gift", "name": "Gift", "cost": 30}],
}

# Starts late in the year so that streams cross New Year (tier review) and run long
# enough for lots to expire.
START = datetime(2027, 11, 1, 8, 0, tzinfo=UTC)
PENDING = timedelta(days=2)
EXPIRY_MONTHS = 3
GOLD_CENTS = 100_00
FIRST_PURCHASE_MIN_CENTS = 5_00
FIRST_PURCHASE_POINTS = 20
GIFT_COST = 30
HOLD_TIMEOUT = timedelta(minutes=15)
EXPIRING_HORIZON = timedelta(days=30)
MAX_MEMBERS = 3


# --------------------------------------------------------------------------- the model


def add_months(moment: datetime, months: int) -> datetime:
    """Same day N calendar months later; the last day of the month if that day is missing."""
    index = moment.month - 1 + months
    year, month = moment.year + index // 12, index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def rate_points(cents: int, tier: str) -> int:
    """floor(1 point per MYR x multiplier): x1 for member, x1.5 for gold."""
    return cents * 3 // 200 if tier == "gold" else cents // 100


def level_for(spend_cents: int) -> str:
    return "gold" if spend_cents >= GOLD_CENTS else "member"


def higher(a: str, b: str) -> str:
    return "gold" if "gold" in (a, b) else "member"


def split_over_lines(refund_cents: int, lefts: list[int]) -> list[int]:
    """A refund by amount spread over what is left of each line, in proportion; the cents
    lost to flooring go to the largest remainders (earlier line on a tie)."""
    base = sum(lefts)
    shares = [0] * len(lefts)
    if base == 0:
        return shares
    remainders = []
    for i, left in enumerate(lefts):
        if left > 0:
            shares[i], remainder = divmod(refund_cents * left, base)
            remainders.append((-remainder, i))
    short = refund_cents - sum(shares)
    for _, i in sorted(remainders)[:short]:
        shares[i] += 1
    return shares


@dataclass
class MLot:
    seq: int
    points: int
    available_at: datetime
    expires_at: datetime
    pending: bool
    order_id: str | None

    def order_key(self) -> tuple[datetime, datetime, int]:
        return (self.expires_at, self.available_at, self.seq)


@dataclass
class MOrder:
    id: str
    member: str
    year: int
    tier: str  # the tier held before the purchase: refunds recompute with it
    categories: list[str]
    line_lefts: list[int]
    left: int
    awards: dict[str, int]


@dataclass
class MHold:
    id: str
    member: str
    points: int
    created_at: datetime
    taken: list[tuple[MLot, int]]


@dataclass
class MMember:
    id: str
    reviewed_year: int
    tier: str = "member"
    purchases: int = 0
    debt: int = 0
    reserved: int = 0
    lots: list[MLot] = field(default_factory=list)

    @property
    def available(self) -> int:
        return sum(lot.points for lot in self.lots if not lot.pending) - self.debt

    @property
    def pending(self) -> int:
        return sum(lot.points for lot in self.lots if lot.pending)

    def spendable(self) -> list[MLot]:
        found = [lot for lot in self.lots if not lot.pending and lot.points > 0]
        return sorted(found, key=MLot.order_key)

    def new_lot(self, available_at: datetime, pending: bool, order_id: str | None) -> MLot:
        lot = MLot(len(self.lots) + 1, 0, available_at,
                   add_months(available_at, EXPIRY_MONTHS), pending, order_id)
        self.lots.append(lot)
        return lot

    def credit_available(self, lot: MLot, points: int) -> None:
        """Points becoming available pay the debt first."""
        paid = min(self.debt, points)
        self.debt -= paid
        lot.points += points - paid

    def take(self, points: int) -> list[tuple[MLot, int]]:
        taken = []
        for lot in self.spendable():
            if points == 0:
                break
            n = min(lot.points, points)
            lot.points -= n
            points -= n
            taken.append((lot, n))
        assert points == 0
        return taken


class Model:
    def __init__(self) -> None:
        self.members: dict[str, MMember] = {}
        self.orders: list[MOrder] = []
        self.holds: dict[str, MHold] = {}  # open holds only
        # Programme accounts, credits minus debits.
        self.accounts: Counter[str] = Counter()

    def spend_in(self, member: str, year: int) -> int:
        return sum(o.left for o in self.orders if o.member == member and o.year == year)

    def enrol(self, member: str, now: datetime) -> None:
        self.members[member] = MMember(member, reviewed_year=now.year)

    def purchase(self, member_id: str, order_id: str, lines: list[tuple[str, int]],
                 amount: int, now: datetime) -> int:
        member = self.members[member_id]
        tier = member.tier
        pastry = sum(cents for category, cents in lines if category == "pastry")
        awards = {"base": rate_points(amount, tier), "pastry-bonus": rate_points(pastry, tier)}
        if member.purchases == 0 and amount >= FIRST_PURCHASE_MIN_CENTS:
            awards["first-purchase"] = FIRST_PURCHASE_POINTS
        awards = {rule: points for rule, points in awards.items() if points > 0}
        total = sum(awards.values())
        if total:
            member.new_lot(now + PENDING, True, order_id).points = total
            self.accounts["issued"] -= total
        member.purchases += 1
        self.orders.append(MOrder(order_id, member_id, now.year, tier,
                                  [c for c, _ in lines], [cents for _, cents in lines],
                                  amount, awards))
        member.tier = higher(tier, level_for(self.spend_in(member_id, now.year)))
        return total

    def refund(self, order: MOrder, cents: int) -> int:
        assert cents <= order.left
        shares = split_over_lines(cents, order.line_lefts)
        order.line_lefts = [left - share for left, share in zip(order.line_lefts, shares,
                                                               strict=True)]
        order.left -= cents
        pastry_left = sum(left for category, left in zip(order.categories, order.line_lefts,
                                                         strict=True) if category == "pastry")
        keep = {
            "base": rate_points(order.left, order.tier),
            "pastry-bonus": rate_points(pastry_left, order.tier),
            "first-purchase": (FIRST_PURCHASE_POINTS
                               if order.left >= FIRST_PURCHASE_MIN_CENTS else 0),
        }
        back = 0
        for rule, awarded in order.awards.items():
            kept = min(keep[rule], awarded)
            back += awarded - kept
            order.awards[rule] = kept
        if back:
            self.clawback(self.members[order.member], back, order.id)
        return back

    def clawback(self, member: MMember, points: int, order_id: str) -> None:
        """The order's own pending points first, then available lots that expire first;
        what is still missing becomes a debt."""
        self.accounts["issued"] += points
        left = points
        for lot in sorted(member.lots, key=MLot.order_key):
            if lot.pending and lot.order_id == order_id:
                n = min(lot.points, left)
                lot.points -= n
                left -= n
        from_lots = min(left, sum(lot.points for lot in member.spendable()))
        member.take(from_lots)
        member.debt += left - from_lots

    def can_spend(self, member: str, points: int) -> bool:
        return points <= self.members[member].available

    def spend(self, member: str, points: int, account: str) -> None:
        self.members[member].take(points)
        self.accounts[account] += points

    def hold(self, member: str, points: int, hold_id: str, now: datetime) -> None:
        taken = self.members[member].take(points)
        self.members[member].reserved += points
        self.holds[hold_id] = MHold(hold_id, member, points, now, taken)

    def capture(self, hold_id: str) -> None:
        hold = self.holds.pop(hold_id)
        self.members[hold.member].reserved -= hold.points
        self.accounts["redeemed"] += hold.points

    def release(self, hold_id: str) -> None:
        """The points go back to the lots they came from; a debt made meanwhile is paid
        from them first."""
        hold = self.holds.pop(hold_id)
        member = self.members[hold.member]
        member.reserved -= hold.points
        for lot, n in hold.taken:
            lot.points += n
        paid = min(member.debt, hold.points)
        member.debt -= paid
        for lot, _ in hold.taken:
            n = min(lot.points, paid)
            lot.points -= n
            paid -= n

    def adjust(self, member_id: str, points: int, now: datetime) -> None:
        member = self.members[member_id]
        if points > 0:
            member.credit_available(member.new_lot(now, False, None), points)
            self.accounts["adjustments"] -= points
        else:
            self.spend(member_id, -points, "adjustments")

    def run_due(self, as_of: datetime) -> None:
        for hold in sorted(self.holds.values(), key=lambda h: h.id):
            if hold.created_at + HOLD_TIMEOUT <= as_of:
                event("run-due released a hold")
                self.release(hold.id)
        for member in self.members.values():
            for lot in sorted(member.lots, key=MLot.order_key):
                if lot.pending and lot.available_at <= as_of:
                    lot.pending = False
                    points, lot.points = lot.points, 0
                    member.credit_available(lot, points)
            for lot in member.spendable():
                if lot.expires_at <= as_of:
                    self.accounts["expired"] += lot.points
                    lot.points = 0
            if member.reviewed_year < as_of.year:
                member.tier = higher(level_for(self.spend_in(member.id, as_of.year - 1)),
                                     level_for(self.spend_in(member.id, as_of.year)))
                member.reviewed_year = as_of.year

    def view(self, member_id: str, now: datetime) -> dict[str, Any]:
        member = self.members[member_id]
        expiring: Counter[datetime] = Counter()
        for lot in member.spendable():
            if lot.expires_at <= now + EXPIRING_HORIZON:
                expiring[lot.expires_at] += lot.points
        return {
            "balances": {"available": member.available, "pending": member.pending,
                         "reserved": member.reserved},
            "tier": member.tier,
            "expiring": sorted(expiring.items()),
        }


# --------------------------------------------------------------------------- the driver


def cents_text(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


class Driver:
    """Applies one operation to the services and to the model, and compares them."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.model = Model()
        self.now = START
        self.serial = itertools.count(1)
        load_programme(engine, PROGRAMME)
        for _ in range(2):
            self.enrol()

    def clock(self) -> Callable[[], datetime]:
        moment = self.now
        return lambda: moment

    def key(self, prefix: str) -> str:
        return f"{prefix}{next(self.serial)}"

    def member(self, selector: int) -> str:
        names = sorted(self.model.members)
        return names[selector % len(names)]

    def postings(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(
                sa.select(sa.func.count()).select_from(tables.postings)).scalar_one())

    @contextmanager
    def refused(self, error: type[Exception], field_name: str) -> Iterator[None]:
        """The request must fail with ``error`` at ``field_name`` and write no posting.
        The model does not change either, so the ``compare`` after the step checks that
        every balance, tier and expiring lot is what it was before."""
        before = self.postings()
        event(f"refused with {error.__name__}")
        with pytest.raises(error) as caught:
            yield
        assert caught.value.field == field_name  # type: ignore[attr-defined]
        assert self.postings() == before

    # -- operations -----------------------------------------------------------------

    def enrol(self) -> None:
        if len(self.model.members) >= MAX_MEMBERS:
            return
        member = f"m{len(self.model.members) + 1}"
        upsert_member(self.engine, PID, member, {"name": member}, self.clock())
        self.model.enrol(member, self.now)

    def purchase(self, selector: int, lines: list[tuple[str, int]], amount: int) -> None:
        member, order_id = self.member(selector), self.key("o")
        payload: dict[str, Any] = {
            "id": self.key("p"), "type": "purchase", "member": member, "order_id": order_id,
            "occurred_at": self.now.isoformat(),
        }
        if lines:
            amount = sum(cents for _, cents in lines)
            payload["lines"] = [
                {"sku": f"SKU-{i}", "category": category, "amount": cents_text(cents)}
                for i, (category, cents) in enumerate(lines)
            ]
        payload["amount"] = cents_text(amount)
        result = ingest_event(self.engine, PID, payload, self.clock())
        expected = self.model.purchase(member, order_id, lines, amount, self.now)
        assert result["points"] == expected

    def refund(self, selector: int, how: str, extra: int) -> None:
        if not self.model.orders:
            return
        order = self.model.orders[selector % len(self.model.orders)]
        if how == "part" and order.left > 0:
            cents = 1 + extra % order.left
        elif how == "all" and order.left > 0:
            cents = order.left
        elif how == "leave" and order.left > extra % 600:
            cents = order.left - extra % 600  # leaves 0.00 to 5.99: around the 5.00 minimum
        else:
            cents = order.left + 1 + extra % 500
        payload = {"id": self.key("r"), "type": "refund", "member": order.member,
                   "order_id": order.id, "occurred_at": self.now.isoformat(),
                   "amount": cents_text(cents)}
        if cents > order.left:
            with self.refused(RefundExceedsOrder, "amount"):
                ingest_event(self.engine, PID, payload, self.clock())
            return
        result = ingest_event(self.engine, PID, payload, self.clock())
        assert result["points"] == -self.model.refund(order, cents)

    def redeem(self, selector: int, hold: bool) -> None:
        self._redeem(self.member(selector), {"reward": "gift"}, GIFT_COST, hold)

    def pay(self, selector: int, points: int, hold: bool) -> None:
        """Points as payment; 0 stands for everything available (so that a later clawback
        leaves a debt)."""
        member = self.member(selector)
        points = points or max(self.model.members[member].available, 1)
        self._redeem(member, {"points": points}, points, hold)

    def _redeem(self, member: str, what: dict[str, Any], points: int, hold: bool) -> None:
        body = {"member": member, **what, **({"hold": True} if hold else {})}
        if not self.model.can_spend(member, points):
            with self.refused(InsufficientPoints, "points"):
                redeem(self.engine, PID, body, self.key("k"), self.clock())
            return
        result = redeem(self.engine, PID, body, self.key("k"), self.clock())
        assert (result["status"], result["points"]) == ("held" if hold else "captured", points)
        if hold:
            self.model.hold(member, points, result["id"], self.now)
        else:
            self.model.spend(member, points, "redeemed")

    def finish(self, selector: int, capture: bool) -> None:
        if not self.model.holds:
            return
        hold_id = sorted(self.model.holds)[selector % len(self.model.holds)]
        action = "capture" if capture else "release"
        result = capture_or_release(self.engine, PID, hold_id, action, self.key("k"),
                                    self.clock())
        assert result["status"] == ("captured" if capture else "released")
        if capture:
            self.model.capture(hold_id)
        else:
            self.model.release(hold_id)

    def adjust(self, selector: int, points: int) -> None:
        member = self.member(selector)
        body = {"member": member, "points": points, "reason": "property test"}
        if points < 0 and not self.model.can_spend(member, -points):
            with self.refused(InsufficientPoints, "points"):
                adjust(self.engine, PID, body, self.key("k"), self.clock())
            return
        adjust(self.engine, PID, body, self.key("k"), self.clock())
        self.model.adjust(member, points, self.now)

    def run_due(self) -> None:
        run_due(self.engine, self.now, program_id=PID)
        self.model.run_due(self.now)

    # -- comparing ------------------------------------------------------------------

    def observed(self) -> dict[str, dict[str, Any]]:
        views = {}
        for member in sorted(self.model.members):
            view = get_member(self.engine, PID, member, self.clock())
            views[member] = {
                "balances": view["balances"],
                "tier": view["tier"]["id"],
                "expiring": [(datetime.fromisoformat(e["expires_at"]), e["points"])
                             for e in view["expiring"]],
            }
        return views

    def compare(self) -> None:
        expected = {member: self.model.view(member, self.now)
                    for member in sorted(self.model.members)}
        assert self.observed() == expected

    def record_coverage(self) -> None:
        """Labels for --hypothesis-show-statistics: which situations the streams reached."""
        for member in self.model.members.values():
            if member.debt:
                event("a member owed points (debt)")
            if member.tier == "gold":
                event("a member reached gold")
        if self.model.accounts["expired"]:
            event("points expired")
        if any(order.awards.get("first-purchase") == 0 for order in self.model.orders):
            event("a first-purchase bonus was clawed back")
        if any(order.left == 0 for order in self.model.orders):
            event("an order was refunded in full")
        if self.now.year > START.year:
            event("the stream crossed New Year")

    def compare_journal(self) -> None:
        assert_journal_ok(self.engine)
        report = check(self.engine)
        totals = report.totals.get(PID, {})
        assert {k: v for k, v in totals.items() if v} == {
            k: v for k, v in self.model.accounts.items() if v}
        members = sum(sum(view["balances"].values()) for view in self.observed().values())
        assert sum(totals.values()) + members == 0


# --------------------------------------------------------------------------- the streams

members = st.integers(0, MAX_MEMBERS - 1)
cents = st.integers(1, 60_00) | st.integers(20_00, 60_00)  # larger amounts reach gold
# Time only moves forward: each operation comes some hours or days after the one before.
gaps = st.one_of(
    st.integers(1, 23).map(lambda h: timedelta(hours=h)),
    st.integers(1, 12).map(lambda d: timedelta(days=d)),
)
purchase = st.tuples(
    st.just("purchase"), members,
    st.lists(st.tuples(st.sampled_from(["pastry", "coffee"]), cents), max_size=2), cents,
)
refund = st.tuples(st.just("refund"), st.integers(0, 50),
                  st.sampled_from(["part", "all", "leave", "over"]), st.integers(0, 10_000))
# Repeated entries weigh an operation: purchases and time passing are the most common.
operation = st.one_of(
    *[st.tuples(st.just("run_due"))] * 3,
    *[purchase] * 5,
    *[refund] * 3,
    st.tuples(st.just("enrol")),
    st.tuples(st.just("redeem"), members, st.booleans()),
    st.tuples(st.just("pay"), members, st.integers(1, 80), st.booleans()),
    st.tuples(st.just("pay"), members, st.just(0), st.booleans()),
    st.tuples(st.just("finish"), st.integers(0, 10), st.booleans()),
    st.tuples(st.just("adjust"), members, st.integers(1, 80) | st.integers(-80, -1)),
)


def truncate(engine: sa.Engine) -> None:
    names = ", ".join(table.name for table in tables.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(sa.text(f"TRUNCATE {names} RESTART IDENTITY"))


@pytest.fixture
def fresh_database(engine: sa.Engine, sqlite_template: Path,
                   tmp_path: Path) -> Callable[[], Any]:
    """A new empty database per hypothesis example: a copy of the migrated template on
    SQLite, the test's PostgreSQL database truncated."""
    examples = itertools.count()

    @contextmanager
    def fresh() -> Iterator[sa.Engine]:
        if engine.dialect.name != "sqlite":
            truncate(engine)
            yield engine
            return
        path = tmp_path / f"example-{next(examples)}.db"
        shutil.copy(sqlite_template, path)
        example = make_engine(f"sqlite:///{path}")
        try:
            yield example
        finally:
            example.dispose()
            path.unlink()

    return fresh


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(operations=st.lists(st.tuples(gaps, operation), min_size=20, max_size=45))
def test_random_streams_of_operations_keep_balances_and_tiers_equal_to_the_model(
        fresh_database: Callable[[], Any],
        operations: list[tuple[timedelta, tuple[Any, ...]]]) -> None:
    # Given a fresh database with the programme and two members
    with fresh_database() as engine:
        driver = Driver(engine)
        driver.compare()
        # When each operation runs, then every member's view equals the model's
        for gap, (name, *arguments) in operations:
            driver.now += gap
            note(f"{driver.now.isoformat()} {name} {arguments}")
            getattr(driver, name)(*arguments)
            driver.compare()
            driver.record_coverage()
        # Then the journal checks out and the programme accounts are the model's
        driver.compare_journal()
