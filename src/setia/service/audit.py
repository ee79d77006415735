"""The audit log: every admin action (who, when, what, before and after), written in the
same transaction as the action itself, append-only (the database refuses UPDATE and DELETE).

Who: the HTTP layer names the caller with ``acting_as`` (a context variable, carried into
the worker thread that runs the service); elsewhere (the CLI) it is ``cli:<os user>``.
Personal data is never copied into the log: a profile change records which fields
changed, not their values, so an erasure leaves nothing personal behind in the log.
"""

from __future__ import annotations

import getpass
from contextvars import ContextVar, Token
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from setia.adapters.db import tables_trust as tt
from setia.adapters.db.store import UnitOfWork
from setia.service.common import iso, require_programme_id

_actor: ContextVar[str | None] = ContextVar("setia_audit_actor", default=None)
MAX_PAGE = 500


def acting_as(actor: str) -> Token[str | None]:
    return _actor.set(actor)


def current_actor() -> str:
    found = _actor.get()
    if found is not None:
        return found
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no user name for this uid (containers)
        return "cli:unknown"


def record(uow: UnitOfWork, action: str, *, program_id: str | None, target: str,
           before: Any, after: Any, now: datetime) -> None:
    """One audit row, in the caller's transaction."""
    uow.execute(tt.audit_log.insert().values(
        at=now, actor=current_actor()[:120], action=action, program_id=program_id,
        target=target[:200], before=before, after=after,
    ))


def record_now(conn: sa.Connection, action: str, *, program_id: str | None, target: str,
               before: Any, after: Any, now: datetime) -> None:
    """``record`` for services that use a plain connection (``engine.begin()``)."""
    conn.execute(tt.audit_log.insert().values(
        at=now, actor=current_actor()[:120], action=action, program_id=program_id,
        target=target[:200], before=before, after=after,
    ))


def stop(uow: UnitOfWork, table: sa.Table, row_id: str, program_id: str, stamp: str,
         now: datetime, unknown: Exception, action: str, target: str) -> None:
    """Stop one of the programme's rows (a member token, a webhook endpoint) by setting its
    ``stamp`` column, once, and audit it; ``unknown`` is raised if no such row is active."""
    column = table.c[stamp]
    done = uow.execute(table.update().where(
        table.c.id == row_id, table.c.program_id == program_id, column.is_(None)
    ).values({stamp: now})).rowcount
    if not done:
        raise unknown
    record(uow, action, program_id=program_id, target=target, before=None, after=None,
           now=now)


def entries(engine: sa.Engine, program_id: str | None = None, *, after_id: int = 0,
            limit: int = 100) -> list[dict[str, Any]]:
    """Audit rows in the order they were written, from after ``after_id``."""
    a = tt.audit_log
    query = (sa.select(a).where(a.c.id > after_id).order_by(a.c.id)
             .limit(min(max(limit, 1), MAX_PAGE)))
    if program_id is not None:
        query = query.where(a.c.program_id == program_id)
    with engine.connect() as conn:
        if program_id is not None:
            require_programme_id(conn, program_id)
        return [
            {"id": row.id, "at": iso(row.at), "actor": row.actor, "action": row.action,
             "program": row.program_id, "target": row.target, "before": row.before,
             "after": row.after}
            for row in conn.execute(query)
        ]
