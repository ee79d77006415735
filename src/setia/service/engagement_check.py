"""``setia check`` for campaigns: the counters beside the journal agree with it.

Per programme and campaign paying points: the points ``campaign_awards`` says were
awarded equal the journal's ``earn`` postings of rule ``campaign:<id>``, and what was
taken back (awarded - kept) equals its ``clawback`` postings (and ``review_reject``
ones: a rejected fraud review; and ``reverse`` ones: a reversal of the event); the budget
row's ``used``
equals everything awarded (points or vouchers).
"""

from __future__ import annotations

import sqlalchemy as sa

from setia.adapters.db import tables as t
from setia.adapters.db import tables_engagement as te


def engagement_problems(conn: sa.Connection) -> list[str]:
    a, b, p = te.campaign_awards, te.campaign_budgets, t.postings
    problems: list[str] = []
    awards = {
        (row.program_id, row.campaign_id): (int(row.awarded), int(row.kept))
        for row in conn.execute(
            sa.select(a.c.program_id, a.c.campaign_id, sa.func.sum(a.c.awarded).label("awarded"),
                      sa.func.sum(a.c.kept).label("kept"))
            .where(a.c.voucher_code.is_(None), ~a.c.campaign_id.startswith("membership:"))
            .group_by(a.c.program_id, a.c.campaign_id))
    }
    journal: dict[tuple[str, str], dict[str, int]] = {}
    for row in conn.execute(
        sa.select(p.c.program_id, p.c.rule_id, p.c.code, sa.func.sum(p.c.points).label("points"))
        .where(p.c.rule_id.startswith("campaign:"),
               p.c.code.in_(("earn", "clawback", "review_reject", "reverse")))
        .group_by(p.c.program_id, p.c.rule_id, p.c.code)
    ):
        key = (row.program_id, row.rule_id.removeprefix("campaign:"))
        # a rejected review or a reversal takes a campaign's points back as a refund's
        # clawback does
        code = "clawback" if row.code in ("review_reject", "reverse") else row.code
        found = journal.setdefault(key, {})
        found[code] = found.get(code, 0) + int(row.points)
    for key in sorted(set(awards) | set(journal)):
        awarded, kept = awards.get(key, (0, 0))
        posted = journal.get(key, {})
        who = f"{key[0]}/campaign:{key[1]}"
        if posted.get("earn", 0) != awarded:
            problems.append(f"{who}: awards say {awarded} points, the journal earned "
                            f"{posted.get('earn', 0)}")
        if posted.get("clawback", 0) != awarded - kept:
            problems.append(f"{who}: awards say {awarded - kept} points taken back, the "
                            f"journal clawed back {posted.get('clawback', 0)}")
    given = {
        (row.program_id, row.campaign_id): int(row.given)
        for row in conn.execute(
            sa.select(a.c.program_id, a.c.campaign_id, sa.func.sum(a.c.awarded).label("given"))
            .group_by(a.c.program_id, a.c.campaign_id))
    }
    for row in conn.execute(sa.select(b)):
        if given.get((row.program_id, row.campaign_id), 0) != row.used:
            problems.append(f"{row.program_id}/campaign:{row.campaign_id}: budget used "
                            f"{row.used}, awards {given.get((row.program_id, row.campaign_id), 0)}")
    return problems
