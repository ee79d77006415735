"""``setia check``: the journal's invariants, verified from the database.

1. Per programme and asset, every account's balance derived from the journal
   sums to zero (each posting names two accounts of the posting's asset).
2. Each member's cached balances equal the journal.
3. Lots equal balances: open available lots hold max(available, 0), pending
   lots hold the pending balance, open holds hold the reserved balance.
4. Store credit (asset ``credit:<currency>``): cached balances equal the journal,
   open till holds hold the reserved credit (service/store_credit.py).
5. Partner settlement sums to zero per programme (service/partners.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from setia.adapters.db import tables as t
from setia.domain.ledger import ASSET_POINTS, MEMBER_ACCOUNTS
from setia.service import partners, store_credit
from setia.service.engagement_check import engagement_problems


@dataclass
class CheckReport:
    postings: int = 0
    members: int = 0
    totals: dict[str, dict[str, int]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _account_flows(conn: sa.Connection) -> list[Any]:
    """(programme, asset, member or None, account, balance) derived from the journal."""
    p = t.postings
    flows = sa.union_all(
        sa.select(
            p.c.program_id,
            p.c.asset,
            p.c.member_pk,
            p.c.credit.label("account"),
            p.c.points.label("delta"),
        ),
        sa.select(
            p.c.program_id,
            p.c.asset,
            p.c.member_pk,
            p.c.debit.label("account"),
            (-p.c.points).label("delta"),
        ),
    ).subquery()
    member_account = flows.c.account.in_(MEMBER_ACCOUNTS)
    owner = sa.case((member_account, flows.c.member_pk), else_=None).label("owner")
    return list(
        conn.execute(
            sa.select(
                flows.c.program_id,
                flows.c.asset,
                owner,
                flows.c.account,
                sa.func.sum(flows.c.delta).label("balance"),
            ).group_by(flows.c.program_id, flows.c.asset, owner, flows.c.account)
        )
    )


def _lot_problems(conn: sa.Connection) -> list[str]:
    """Each lot keeps between none and all of its points (the per-member sums below would
    not see points moved from one lot to another)."""
    lots = t.lots
    return [f"member #{row.member_pk}: lot {row.seq} keeps {row.remaining} of its "
            f"{row.points} points"
            for row in conn.execute(sa.select(lots.c.member_pk, lots.c.seq, lots.c.points,
                                              lots.c.remaining)
                                    .where(sa.or_(lots.c.remaining < 0,
                                                  lots.c.remaining > lots.c.points))
                                    .order_by(lots.c.member_pk, lots.c.seq).limit(100))]


def _balance_after_problems(conn: sa.Connection) -> list[str]:
    """Each posting's balance after it, on each of the member's accounts it moves, is the
    sum of that account's postings up to it (what statements and the activity show)."""
    p = t.postings
    sides = sa.union_all(
        sa.select(p.c.id, p.c.member_pk, p.c.asset, p.c.credit.label("account"),
                  p.c.points.label("delta"), p.c.credit_balance_after.label("after")),
        sa.select(p.c.id, p.c.member_pk, p.c.asset, p.c.debit.label("account"),
                  (-p.c.points).label("delta"), p.c.debit_balance_after.label("after")),
    ).subquery()
    running = sa.select(
        sides, sa.func.sum(sides.c.delta).over(
            partition_by=(sides.c.member_pk, sides.c.asset, sides.c.account),
            order_by=sides.c.id).label("running"),
    ).where(sides.c.account.in_(MEMBER_ACCOUNTS)).subquery()
    return [f"posting {row.id}: member #{row.member_pk}'s {row.asset} {row.account} after it "
            f"is {row.after}, the journal says {row.running}"
            for row in conn.execute(sa.select(running).where(
                running.c.after.is_not(None), running.c.after != running.c.running)
                .order_by(running.c.id).limit(100))]


def check(engine: sa.Engine) -> CheckReport:
    report = CheckReport()
    with engine.connect() as conn:
        report.postings = conn.execute(
            sa.select(sa.func.count()).select_from(t.postings)
        ).scalar_one()
        journal: dict[tuple[int, str], int] = {}
        sums: dict[tuple[str, str], int] = {}
        for row in _account_flows(conn):
            balance = int(row.balance)
            sums[(row.program_id, row.asset)] = sums.get((row.program_id, row.asset), 0) + balance
            if row.asset != ASSET_POINTS:
                continue  # store credit: checked by store_credit.check_journal below
            if row.owner is not None:
                journal[(row.owner, row.account)] = balance
            else:
                report.totals.setdefault(row.program_id, {})[row.account] = balance
        for (program_id, asset), total in sorted(sums.items()):
            if total != 0:
                report.problems.append(f"{program_id}/{asset}: accounts sum to {total}, not 0")

        lots = t.lots
        lot_sums = {
            row.member_pk: (int(row.available or 0), int(row.pending or 0))
            for row in conn.execute(
                sa.select(
                    lots.c.member_pk,
                    sa.func.sum(
                        sa.case((lots.c.pending.is_(False), lots.c.remaining), else_=0)
                    ).label("available"),
                    sa.func.sum(
                        sa.case((lots.c.pending.is_(True), lots.c.remaining), else_=0)
                    ).label("pending"),
                ).group_by(lots.c.member_pk)
            )
        }
        r = t.redemptions
        held = {
            row.member_pk: int(row.points)
            for row in conn.execute(
                sa.select(r.c.member_pk, sa.func.sum(r.c.points).label("points"))
                .where(r.c.status == "held")
                .group_by(r.c.member_pk)
            )
        }
        for member in conn.execute(
            sa.select(
                t.members.c.pk,
                t.members.c.program_id,
                t.members.c.id,
                t.members.c.available,
                t.members.c.pending,
                t.members.c.reserved,
            )
        ):
            report.members += 1
            cached = {
                "available": member.available,
                "pending": member.pending,
                "reserved": member.reserved,
            }
            who = f"{member.program_id}/{member.id}"
            for account, value in cached.items():
                derived = journal.get((member.pk, account), 0)
                if derived != value:
                    report.problems.append(
                        f"{who}: cached {account} {value} but the journal says {derived}"
                    )
            in_lots, pending_lots = lot_sums.get(member.pk, (0, 0))
            if in_lots != max(member.available, 0):
                report.problems.append(
                    f"{who}: lots hold {in_lots} available points, balance is {member.available}"
                )
            if pending_lots != member.pending:
                report.problems.append(
                    f"{who}: pending lots hold {pending_lots}, pending balance is {member.pending}"
                )
            if held.get(member.pk, 0) != member.reserved:
                report.problems.append(
                    f"{who}: open holds reserve {held.get(member.pk, 0)}, "
                    f"reserved balance is {member.reserved}"
                )
            if member.pending < 0 or member.reserved < 0:
                report.problems.append(f"{who}: a pending or reserved balance is negative")
        report.problems += _lot_problems(conn)
        report.problems += _balance_after_problems(conn)
        report.problems.extend(engagement_problems(conn))
        report.problems += store_credit.check_journal(conn)
        report.problems += partners.check_journal(conn)
    return report
