"""Member tokens: a bearer token that stands for one member of one programme, for the
member portal. It may read only that member (profile, balances, activity) and redeem
for them; nothing else. ``smt_<id>_<secret>``, stored as a SHA-256 hash like API keys,
valid for ``days`` (default 30), revocable; an erasure revokes the member's tokens.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from setia.adapters.db import tables as t
from setia.adapters.db import tables_trust as tt
from setia.adapters.db.store import UnitOfWork
from setia.domain.errors import InvalidField, UnknownMember
from setia.domain.trust import UnknownToken
from setia.service import audit
from setia.service.common import (
    MAX_KEY_LENGTH,
    Clock,
    iso,
    require_programme,
    transaction,
    utc_now,
)

PREFIX = "smt"
MAX_DAYS = 365
CACHE_SECONDS = 30.0  # a revoked token stops working within this time


@dataclass(frozen=True)
class MemberPrincipal:
    token_id: str
    program_id: str
    member_pk: int
    expires_at: datetime


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue(engine: sa.Engine, program_id: str, member_id: str, *, days: int = 30,
          clock: Clock = utc_now) -> dict[str, str | None]:
    """A new token for the member, shown once; audited (the token itself is not logged)."""
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
        raise InvalidField(f"days must be a whole number from 1 to {MAX_DAYS}", field="days")

    def work(uow: UnitOfWork) -> dict[str, str | None]:
        require_programme(uow, program_id)
        now = clock()
        # Shared until the commit: an erasure under way is waited for (it revokes the
        # tokens it finds), and then no member has that id.
        pk = uow.execute(sa.select(t.members.c.pk).where(
            t.members.c.program_id == program_id, t.members.c.id == member_id)
            .with_for_update(read=True)).scalar()
        if pk is None:
            raise UnknownMember(f"no member {member_id!r} in programme {program_id}",
                                field="member")
        token_id = secrets.token_hex(6)
        token = f"{PREFIX}_{token_id}_{secrets.token_urlsafe(24)}"
        expires_at = now + timedelta(days=days)
        uow.execute(tt.member_tokens.insert().values(
            id=token_id, secret_hash=_digest(token), program_id=program_id, member_pk=pk,
            created_at=now, expires_at=expires_at))
        audit.record(uow, "member_token.issue", program_id=program_id, target=f"member #{pk}",
                     before=None, after={"token_id": token_id, "expires_at": iso(expires_at)},
                     now=now)
        uow.commit()
        return {"token": token, "token_id": token_id, "expires_at": iso(expires_at)}

    return transaction(engine, work)


def revoke(engine: sa.Engine, program_id: str, token_id: str, clock: Clock = utc_now) -> None:
    def work(uow: UnitOfWork) -> None:
        audit.stop(uow, tt.member_tokens, token_id, program_id, "revoked_at", clock(),
                   UnknownToken(f"no active member token {token_id!r}", field="token"),
                   "member_token.revoke", f"token {token_id}")
        uow.commit()

    transaction(engine, work)


def looks_like_token(value: str) -> bool:
    return value.startswith(PREFIX + "_")


_cache: dict[str, tuple[float, MemberPrincipal | None]] = {}
_cache_lock = threading.Lock()


def authenticate(engine: sa.Engine, token: str, clock: Clock = utc_now) -> MemberPrincipal | None:
    """The member a presented token stands for, or None (unknown, expired or revoked)."""
    parts = token.split("_", 2)  # the secret may hold "_" itself
    if len(parts) != 3 or parts[0] != PREFIX or len(token) > 200:
        return None
    cached = _cache.get(token)
    if cached is not None and cached[0] > time.monotonic():
        found = cached[1]
        return found if found is None or found.expires_at > clock() else None
    m = tt.member_tokens
    with engine.connect() as conn:
        row = conn.execute(sa.select(m).where(m.c.id == parts[1])).one_or_none()
    principal = None
    if (row is not None and row.revoked_at is None and row.expires_at > clock()
            and hmac.compare_digest(row.secret_hash, _digest(token))):
        principal = MemberPrincipal(token_id=row.id, program_id=row.program_id,
                                    member_pk=row.member_pk, expires_at=row.expires_at)
    with _cache_lock:
        if len(_cache) > 10_000:
            _cache.clear()
        # a revocation in another process takes effect within CACHE_SECONDS; expiry at once
        _cache[token] = (time.monotonic() + CACHE_SECONDS, principal)
    return principal


def member_id(engine: sa.Engine, principal: MemberPrincipal) -> str:
    """The member's current id (an erasure changes it, and revokes the token)."""
    with engine.connect() as conn:
        found = conn.execute(sa.select(t.members.c.id).where(
            t.members.c.pk == principal.member_pk)).scalar()
    if found is None:
        raise UnknownMember("the member of this token no longer exists", field="member")
    return str(found)


def scoped_key(member_pk: int, key: str) -> str:
    """A member's own Idempotency-Key as kept: scoped to the member's row, so that two
    members' keys never meet. A key too long for the column with the scope before it (the
    member may send 200 characters, as staff may) is kept by its SHA-256."""
    scoped = f"member:{member_pk}:{key}"
    if len(scoped) <= MAX_KEY_LENGTH:
        return scoped
    return f"member:{member_pk}:#{hashlib.sha256(key.encode()).hexdigest()}"

