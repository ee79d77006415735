"""The points ledger of one member: lots, balances and the postings that move them.

Every change is a ``Posting``: a transfer of N points from one account to
another. A member has three accounts (available, pending, reserved); the
programme has issued, redeemed, expired and adjustments. Programme accounts
carry no cached balance (they are derived from the journal), member accounts
do, and each posting records the member-side balance after it.

Points live in lots. Spending, holds and clawbacks take the lots that expire
first; a clawback may leave the available balance negative (a debt) which
later earnings and activations pay off first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo

from setia.domain.errors import InsufficientPoints

ASSET_POINTS = "points"
AVAILABLE = "available"
PENDING = "pending"
RESERVED = "reserved"
MEMBER_ACCOUNTS = (AVAILABLE, PENDING, RESERVED)
ISSUED = "issued"
REDEEMED = "redeemed"
EXPIRED = "expired"
ADJUSTMENTS = "adjustments"
PROGRAMME_ACCOUNTS = (ISSUED, REDEEMED, EXPIRED, ADJUSTMENTS)

# The expiry a lot without one sorts by: after every instant.
_FAR_FUTURE = datetime.max.replace(tzinfo=UTC)
# available_at of a lot held for a fraud review: never due by itself (domain/trust.py)
UNDER_REVIEW = datetime(9999, 1, 1, tzinfo=UTC)


@dataclass(slots=True)
class Posting:
    code: str
    debit: str
    credit: str
    points: int
    rule_id: str | None = None
    explanation: str = ""
    debit_balance_after: int | None = None
    credit_balance_after: int | None = None

    def __post_init__(self) -> None:
        assert self.points > 0, f"a posting moves a positive amount, got {self.points}"
        assert self.debit != self.credit, "a posting moves points between two accounts"


def as_utc(moment: datetime) -> datetime:
    """A lot's time in UTC (the same instant), as lots read from the database carry it."""
    return moment if moment.tzinfo is UTC else moment.astimezone(UTC)


@dataclass(slots=True)
class Lot:
    seq: int
    source: str
    points: int
    remaining: int
    available_at: datetime
    expires_at: datetime | None
    pending: bool
    order_id: str | None = None
    new: bool = False
    dirty: bool = False

    def sort_key(self) -> tuple[datetime, datetime, int]:
        """Instants, compared across zones: a lot earned in this unit of work and one read
        from the database may be in different ones. Times are kept in UTC (``as_utc``),
        as the database gives them: aware times of one zone compare as fast as naive
        ones, which converting here, per lot per sort, would not."""
        return (self.expires_at or _FAR_FUTURE, self.available_at, self.seq)


@dataclass(slots=True)
class Allocation:
    """Points taken from one lot, kept so a released hold can give them back."""

    lot_seq: int
    points: int


@dataclass
class MemberLedger:
    """The in-memory state of one member's points, loaded under the member's lock."""

    member_pk: int
    available: int = 0
    pending: int = 0
    reserved: int = 0
    lot_seq: int = 0
    lots: dict[int, Lot] = field(default_factory=dict)
    postings: list[Posting] = field(default_factory=list)
    new_lots: dict[tuple[str, bool], int] = field(default_factory=dict)  # not yet written
    # Reads the member's open lots when first needed. Earning needs no old lot (a debt
    # is the negative balance itself), so the bulk path never reads lots it does not use.
    lots_loader: Callable[[], Iterable[Lot]] | None = field(default=None, repr=False)

    def ensure_lots(self) -> None:
        loader, self.lots_loader = self.lots_loader, None
        if loader is not None:
            for lot in loader():
                self.lots.setdefault(lot.seq, lot)

    @property
    def lots_loaded(self) -> bool:
        return self.lots_loader is None

    # -- balances -------------------------------------------------------------

    def _balance(self, account: str) -> int | None:
        if account == AVAILABLE:
            return self.available
        if account == PENDING:
            return self.pending
        if account == RESERVED:
            return self.reserved
        return None

    def _add(self, account: str, delta: int) -> None:
        if account == AVAILABLE:
            self.available += delta
        elif account == PENDING:
            self.pending += delta
        elif account == RESERVED:
            self.reserved += delta

    def _post(self, code: str, debit: str, credit: str, points: int,
              rule_id: str | None = None, explanation: str = "") -> Posting:
        self._add(debit, -points)
        self._add(credit, points)
        posting = Posting(
            code=code, debit=debit, credit=credit, points=points, rule_id=rule_id,
            explanation=explanation,
            debit_balance_after=self._balance(debit),
            credit_balance_after=self._balance(credit),
        )
        self.postings.append(posting)
        return posting

    @property
    def debt(self) -> int:
        return max(0, -self.available)

    def available_lots(self) -> list[Lot]:
        self.ensure_lots()
        return sorted(
            (lot for lot in self.lots.values() if not lot.pending and lot.remaining > 0),
            key=Lot.sort_key,
        )

    def _touch(self, lot: Lot) -> None:
        if not lot.new:
            lot.dirty = True

    def _take(self, points: int) -> list[Allocation]:
        """Take points from available lots, the ones that expire first first."""
        allocations: list[Allocation] = []
        left = points
        for lot in self.available_lots():
            if left == 0:
                break
            taken = min(lot.remaining, left)
            lot.remaining -= taken
            self._touch(lot)
            allocations.append(Allocation(lot.seq, taken))
            left -= taken
        assert left == 0, "lots must cover the available balance"
        return allocations

    # -- earning --------------------------------------------------------------

    def earn(self, points: int, *, source: str, rule_id: str | None, explanation: str,
             available_at: datetime, pending: bool, expires_at: datetime | None,
             order_id: str | None = None, code: str = "earn", debit: str = ISSUED) -> None:
        """Credit earned points into a new lot; pending points wait for run-due."""
        if points <= 0:
            return
        lot = self._lot_for(source, available_at, expires_at, pending, order_id)
        lot.points += points
        if pending:
            lot.remaining += points
            self._post(code, debit, PENDING, points, rule_id, explanation)
        else:
            debt_paid = min(self.debt, points)
            lot.remaining += points - debt_paid
            self._post(code, debit, AVAILABLE, points, rule_id, explanation)

    def _lot_for(self, source: str, available_at: datetime, expires_at: datetime | None,
                 pending: bool, order_id: str | None) -> Lot:
        """The lot this operation's points go to: one per source (event) and state."""
        seq = self.new_lots.get((source, pending))
        if seq is not None:
            return self.lots[seq]
        self.lot_seq += 1
        lot = Lot(seq=self.lot_seq, source=source, points=0, remaining=0,
                  available_at=as_utc(available_at),
                  expires_at=as_utc(expires_at) if expires_at is not None else None,
                  pending=pending,
                  order_id=order_id, new=True)
        self.lots[lot.seq] = lot
        self.new_lots[(source, pending)] = lot.seq
        return lot

    def activate(self, as_of: datetime) -> int:
        """Pending lots whose time has come become available (paying any debt first)."""
        activated = 0
        self.ensure_lots()
        for lot in sorted(self.lots.values(), key=Lot.sort_key):
            if not lot.pending or lot.available_at > as_of:
                continue
            lot.pending = False
            self._touch(lot)
            if lot.remaining > 0:
                amount = lot.remaining
                debt_paid = min(self.debt, amount)
                lot.remaining -= debt_paid
                self._post("activate", PENDING, AVAILABLE, amount, None,
                           f"{amount} pending points became available")
                activated += amount
        return activated

    # -- fraud review (domain/trust.py) --------------------------------------------

    def suspend(self, seq: int, explanation: str) -> int:
        """Keep a lot of this event's earnings pending until a review releases it; the
        points move from available to pending. Answers the points held."""
        lot = self.lots[seq]
        lot.available_at = UNDER_REVIEW
        self._touch(lot)
        if lot.pending:  # pending already (pending_days): only its due time changes
            return lot.remaining
        lot.pending = True
        lot.remaining = lot.points  # any debt it paid is owed again while it is held
        self._post("review_hold", AVAILABLE, PENDING, lot.points, None, explanation)
        return lot.points

    def reschedule(self, seq: int, available_at: datetime) -> None:
        """A lot held for review is due at ``available_at`` again (its review rejected:
        whatever it still holds stays pending until then)."""
        lot = self.lots[seq]
        lot.available_at = as_utc(available_at)
        self._touch(lot)

    def resume(self, seq: int, available_at: datetime, now: datetime, explanation: str) -> int:
        """An approved review: the lot is due when it would have been; if that time has
        come its points become available now (paying any debt first)."""
        lot = self.lots[seq]
        lot.available_at = as_utc(available_at)
        self._touch(lot)
        if not lot.pending or available_at > now:
            return 0
        lot.pending = False
        amount = lot.remaining
        if amount > 0:
            lot.remaining -= min(self.debt, amount)
            self._post("review_ok", PENDING, AVAILABLE, amount, None, explanation)
        return amount

    # -- spending ---------------------------------------------------------------

    def spend(self, points: int, *, code: str, credit: str, explanation: str) -> list[Allocation]:
        """Move available points out (redemption, negative adjustment); never below zero."""
        assert points > 0
        if points > self.available:
            raise InsufficientPoints(
                f"needs {points} points but only {max(self.available, 0)} are available",
                field="points",
                available=max(self.available, 0),
                required=points,
            )
        allocations = self._take(points)
        self._post(code, AVAILABLE, credit, points, None, explanation)
        assert self.available >= 0
        return allocations

    def hold(self, points: int, explanation: str) -> list[Allocation]:
        if points > self.available:
            raise InsufficientPoints(
                f"needs {points} points but only {max(self.available, 0)} are available",
                field="points",
                available=max(self.available, 0),
                required=points,
            )
        allocations = self._take(points)
        self._post("hold", AVAILABLE, RESERVED, points, None, explanation)
        return allocations

    def capture(self, points: int, explanation: str) -> None:
        assert points <= self.reserved, "a capture takes only what its hold reserved"
        self._post("capture", RESERVED, REDEEMED, points, None, explanation)

    def release(self, points: int, allocations: list[Allocation], explanation: str) -> None:
        assert points <= self.reserved
        self.ensure_lots()
        restored = 0
        for allocation in allocations:
            lot = self.lots.get(allocation.lot_seq)
            assert lot is not None, "a hold's lots stay loaded while it is open"
            lot.remaining += allocation.points
            self._touch(lot)
            restored += allocation.points
        assert restored == points
        debt_paid = min(self.debt, points)
        if debt_paid:
            # A clawback during the hold left a debt: the released points pay it first.
            self._take_from_restored(allocations, debt_paid)
        self._post("release", RESERVED, AVAILABLE, points, None, explanation)

    def _take_from_restored(self, allocations: list[Allocation], points: int) -> None:
        left = points
        for allocation in allocations:
            lot = self.lots[allocation.lot_seq]
            taken = min(lot.remaining, left)
            lot.remaining -= taken
            left -= taken
            if left == 0:
                return

    # -- taking back --------------------------------------------------------------

    def clawback(self, points: int, *, order_id: str | None, rule_id: str | None,
                 explanation: str, code: str = "clawback", credit: str = ISSUED,
                 source: str | None = None) -> None:
        """Take back earned points: from the order's (or the source event's) still-pending
        lots first, then the available lots that expire first; the rest becomes a debt."""
        left = points
        self.ensure_lots()
        if order_id is not None or source is not None:
            for lot in sorted(self.lots.values(), key=Lot.sort_key):
                if left == 0:
                    break
                own = (order_id is not None and lot.order_id == order_id) or (
                    source is not None and lot.source == source)
                if lot.pending and own and lot.remaining > 0:
                    taken = min(lot.remaining, left)
                    lot.remaining -= taken
                    self._touch(lot)
                    left -= taken
                    self._post(code, PENDING, credit, taken, rule_id, explanation)
        if left == 0:
            return
        from_lots = min(left, max(self.available, 0))
        if from_lots:
            self._take(from_lots)
        self._post(code, AVAILABLE, credit, left, rule_id, explanation)

    def expire_due_lots(self, as_of: datetime, tz: tzinfo = UTC) -> int:
        """Rolling expiry: lots whose expires_at has come lose what remains of them (the
        day each was earned told on the programme's wall clock, ``tz``)."""
        expired = 0
        for lot in self.available_lots():
            if lot.expires_at is not None and lot.expires_at <= as_of:
                amount = lot.remaining
                lot.remaining = 0
                self._touch(lot)
                expired += amount
                self._post("expire", AVAILABLE, EXPIRED, amount, None,
                           f"{amount} points earned {lot.available_at.astimezone(tz).date()} "
                           "expired")
        return expired

    def expire_all(self, reason: str) -> int:
        """Inactivity expiry: every available point expires at once."""
        expired = 0
        for lot in self.available_lots():
            expired += lot.remaining
            lot.remaining = 0
            self._touch(lot)
        if expired:
            self._post("expire", AVAILABLE, EXPIRED, expired, None, reason)
        return expired

    def check(self) -> None:
        """Invariants that hold after every operation (TigerBeetle-style assertions).

        The lot sums are checked when the lots are in memory; `setia check` checks them all."""
        assert self.reserved >= 0 and self.pending >= 0
        if not self.lots_loaded:
            return
        available_in_lots = sum(lot.remaining for lot in self.lots.values() if not lot.pending)
        pending_in_lots = sum(lot.remaining for lot in self.lots.values() if lot.pending)
        assert available_in_lots == max(self.available, 0), (
            f"lots hold {available_in_lots} available points, balance is {self.available}"
        )
        assert pending_in_lots == self.pending, (
            f"lots hold {pending_in_lots} pending points, balance is {self.pending}"
        )
        assert self.reserved >= 0 and self.pending >= 0
