"""Run-due work member by member (``run_due`` and ``engagement_due``): members in batches
of ``BATCH_MEMBERS``, each batch one transaction, its members locked with SKIP LOCKED on
PostgreSQL so that several workers share the work."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import datetime

import sqlalchemy as sa

from setia.adapters.db.store import PostingContext, UnitOfWork
from setia.domain.member import Member
from setia.domain.programme import Programme
from setia.service import outbox
from setia.service.common import require_programme, transaction

BATCH_MEMBERS = 200
Work = Callable[[UnitOfWork, Programme, Member, Counter[str]], None]


def each_member(engine: sa.Engine, program_id: str, pks: list[int], as_of: datetime,
                work: Work, *, announce: bool) -> Counter[str]:
    """Run ``work`` on each member of ``pks`` and record its postings under
    ``run-due:<as_of>`` (with their outbox messages when ``announce``). ``work`` counts what
    it did into a tally of its own attempt, added to the total once its batch commits: a
    batch retried (a deadlock, or a key collision) is counted once, as it was done once."""
    total: Counter[str] = Counter()
    ref = f"run-due:{as_of.isoformat()}"
    for start in range(0, len(pks), BATCH_MEMBERS):
        chunk = pks[start:start + BATCH_MEMBERS]

        def batch(uow: UnitOfWork, chunk: list[int] = chunk) -> Counter[str]:
            tally: Counter[str] = Counter()
            programme = require_programme(uow, program_id)
            for member in uow.members_for_update(program_id, chunk, skip_locked=True):
                work(uow, programme, member, tally)
                postings = uow.record(program_id, member,
                                      PostingContext(ref, programme.version, as_of))
                if announce:
                    outbox.changed(uow, programme, member, postings, ref, as_of)
            uow.commit()
            return tally

        total.update(transaction(engine, batch))
    return total
