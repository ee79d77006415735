"""A member's journal lines, newest first, with a cursor (the last posting id seen)."""

from __future__ import annotations

import base64
from typing import Any

import sqlalchemy as sa

from setia.adapters.db import tables as t
from setia.domain.errors import InvalidField, UnknownMember
from setia.domain.ledger import ASSET_POINTS, MEMBER_ACCOUNTS
from setia.service.common import require_programme, transaction

MAX_LIMIT = 200


def encode_cursor(posting_id: int) -> str:
    return base64.urlsafe_b64encode(f"p{posting_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not text.startswith("p"):
            raise ValueError(text)
        return int(text[1:])
    except (ValueError, UnicodeDecodeError):
        raise InvalidField("cursor is not one this API gave out", field="cursor") from None


def _line(row: Any) -> dict[str, Any]:
    into_member = row.credit in MEMBER_ACCOUNTS
    out_of_member = row.debit in MEMBER_ACCOUNTS
    points = row.points if into_member and not out_of_member else (
        -row.points if out_of_member and not into_member else 0)
    return {
        "id": row.id,
        "occurred_at": row.occurred_at.isoformat(),
        "code": row.code,
        "rule": row.rule_id,
        "program_version": row.program_version,
        "points": points,
        "from": row.debit,
        "to": row.credit,
        "moved": row.points,
        "ref": row.ref,
        "explanation": row.explanation,
        "balance_after": row.credit_balance_after if into_member else row.debit_balance_after,
    }


def member_activity(engine: sa.Engine, program_id: str, member_id: str, *, limit: int = 50,
                    cursor: str | None = None) -> dict[str, Any]:
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidField(f"limit must be between 1 and {MAX_LIMIT}", field="limit")
    before = decode_cursor(cursor) if cursor else None

    def work(uow: Any) -> dict[str, Any]:
        require_programme(uow, program_id)
        pk = uow.execute(sa.select(t.members.c.pk).where(
            t.members.c.program_id == program_id, t.members.c.id == member_id)).scalar()
        if pk is None:
            raise UnknownMember(f"no member {member_id!r} in programme {program_id}",
                                field="member")
        query = sa.select(t.postings).where(t.postings.c.member_pk == pk,
                                            t.postings.c.asset == ASSET_POINTS)
        if before is not None:
            query = query.where(t.postings.c.id < before)
        rows = uow.execute(query.order_by(t.postings.c.id.desc()).limit(limit + 1)).all()
        lines = [_line(row) for row in rows[:limit]]
        more = len(rows) > limit
        return {"data": lines,
                "next_cursor": encode_cursor(lines[-1]["id"]) if more and lines else None}

    return transaction(engine, work, read_only=True)
