"""What every service shares: transactions with bounded retries, request hashes, clocks."""

from __future__ import annotations

import hashlib
import random
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from setia.adapters.db import tables as t
from setia.adapters.db.store import UnitOfWork
from setia.domain.errors import Busy, InvalidField, SetiaError, UnknownProgramme
from setia.domain.programme import Programme

T = TypeVar("T")
MAX_ATTEMPTS = 8
RETRY_AFTER_SECONDS = 1

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def request_hash(payload: Any) -> str:
    canonical = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS, default=str)
    return hashlib.sha256(canonical).hexdigest()


def _retryable(exc: Exception) -> bool:
    if isinstance(exc, IntegrityError):
        # A concurrent writer inserted the same key first; the retry sees its row.
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        # The connection was lost (a restarted database, a dropped idle connection): the
        # pool was invalidated, so the retry runs on a new connection. Every write is
        # idempotent (event ids, idempotency keys), so a retry after a lost COMMIT replays.
        return True
    if isinstance(exc, OperationalError | DBAPIError):
        code = getattr(getattr(exc, "orig", None), "sqlstate", None)
        if code in ("40001", "40P01", "55P03"):
            return True
        text = str(exc).lower()
        return "database is locked" in text or "deadlock" in text
    return False


class _KeyStoredMeanwhile(Exception):  # noqa: N818 (a signal to retry, not an error)
    """A command was refused, and its idempotency key was stored meanwhile by a concurrent
    request with the same key (PostgreSQL, READ COMMITTED): the refusal came from that
    request's own effect. The transaction is rolled back and run again, to replay."""


def transaction(engine: sa.Engine, work: Callable[[UnitOfWork], T], *,
                read_only: bool = False) -> T:
    """Run ``work`` in one unit of work; retry serialisation failures and deadlocks a
    bounded number of times, then answer Busy (the API's 503 with Retry-After).
    ``read_only``: the work only reads (a READ ONLY transaction on PostgreSQL, which
    refuses any write), and the transaction ends with COMMIT instead of ROLLBACK.

    A retry after a write collided with a key (``IntegrityError``) runs with
    ``after_collision``: its event lookups also find ids that are only registered, whose
    events were pruned, so a pruned id sent again is refused as used, not retried until
    it answers Busy. The first attempt, the common one, is spared that lookup."""
    collided = False
    for attempt in range(MAX_ATTEMPTS):
        try:
            with UnitOfWork(engine, read_only=read_only, after_collision=collided) as uow:
                return work(uow)
        except SetiaError:
            raise
        except _KeyStoredMeanwhile:
            continue
        except (OperationalError, IntegrityError, DBAPIError) as exc:
            collided = collided or isinstance(exc, IntegrityError)
            if not _retryable(exc) or attempt == MAX_ATTEMPTS - 1:
                if _retryable(exc):
                    break
                raise
            time.sleep(min(0.2, 0.005 * 2**attempt) * (0.5 + random.random()))
    raise Busy("the database stayed busy; retry shortly", retry_after=RETRY_AFTER_SECONDS)


def require_programme(uow: UnitOfWork, program_id: str, version: int | None = None) -> Programme:
    programme = uow.programme(program_id, version)
    if programme is None:
        raise UnknownProgramme(f"no programme {program_id!r}; store one first", field="program")
    return programme


def require_programme_id(conn: sa.Connection, program_id: str) -> None:
    """Refuse an unknown programme where only its rows are read (not its definition)."""
    if conn.execute(sa.select(t.programs.c.id).where(t.programs.c.id == program_id)
                    ).first() is None:
        raise UnknownProgramme(f"no programme {program_id!r}; store one first", field="program")


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def idempotent(uow: UnitOfWork, program_id: str, key: str, operation: str, body: Any,
               run: Callable[[], dict[str, Any]], now: datetime) -> dict[str, Any]:
    """Run a command once per key: the same key and body answer the first result again;
    the same key with another body is refused. The key is stored in the same transaction."""
    from setia.domain.errors import IdempotencyConflict, InvalidField

    if not isinstance(key, str) or not key.strip() or len(key) > MAX_KEY_LENGTH:
        raise InvalidField(f"an idempotency key of 1 to {MAX_KEY_LENGTH} characters is required",
                           field="Idempotency-Key")
    digest = request_hash({"operation": operation, "body": body})
    stored = uow.stored_command(program_id, key)
    if stored is not None:
        if stored.request_hash != digest:
            raise IdempotencyConflict(
                f"idempotency key {key!r} was already used for a different request",
                field="Idempotency-Key",
            )
        return dict(stored.result)
    try:
        result = run()
    except SetiaError:
        # A retry sent while the first request with this key was still running found no key
        # stored, then waited for the first one's locks and met its effect (the voucher used,
        # the last item sold): it must answer the first result, not a refusal. Each
        # statement reads what has committed, so the key is visible now if so.
        if uow.stored_command(program_id, key) is not None:
            raise _KeyStoredMeanwhile from None
        raise
    uow.add_command(program_id, key, operation, digest, result, now)
    return result


MAX_REF_LENGTH = 200  # postings.ref
MAX_KEY_LENGTH = 200  # commands.key: an idempotency key as kept


def require_ref_fits(prefix: str, text: Any, field: str) -> None:
    """Refuse a key or reference whose posting reference (``prefix`` + it) would not fit
    the journal's column: a 500 at the commit otherwise."""
    if isinstance(text, str) and len(prefix) + len(text) > MAX_REF_LENGTH:
        raise InvalidField(
            f"{field} may be at most {MAX_REF_LENGTH - len(prefix)} characters here: the "
            f"journal's reference is {prefix}<{field}>", field=field)


MAX_REASON_LENGTH = 300


def require_reason(body: dict[str, Any]) -> str:
    """The reason an admin gives for a correction: required, 1 to 300 characters."""
    from setia.domain.errors import InvalidField

    reason = body.get("reason")
    if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON_LENGTH:
        raise InvalidField(f"reason is required (1 to {MAX_REASON_LENGTH} characters)",
                           field="reason")
    return reason


# The advisory locks each unit of work holds (a batch sends each key once).
_held_locks: weakref.WeakKeyDictionary[UnitOfWork, set[int]] = weakref.WeakKeyDictionary()


def advisory_xact_lock(uow: UnitOfWork, *name: str | int) -> None:
    """Hold a lock on ``name`` until the transaction ends, on PostgreSQL
    (``pg_advisory_xact_lock``); SQLite has one writer and needs none. For a check that
    reads rows another transaction may be about to insert, where there is no row to lock.
    The name is hashed to the lock's 64-bit key: a rare collision of two names only makes
    their writes wait for each other."""
    advisory_xact_locks(uow, [name])


def advisory_xact_locks(uow: UnitOfWork, names: Iterable[Sequence[str | int]]) -> None:
    """``advisory_xact_lock`` on each of ``names`` not held yet, in the order of their keys
    (two commands that take several in that one order cannot deadlock on them), in one
    statement: the array's function scan calls the lock function element by element, in
    the array's order."""
    if uow.dialect != "postgresql":
        return
    held = _held_locks.setdefault(uow, set())
    keys = sorted({lock_key(*name) for name in names} - held)
    if not keys:
        return
    if len(keys) == 1:
        uow.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": keys[0]})
    else:
        uow.execute(sa.text("SELECT count(pg_advisory_xact_lock(k)) "
                            "FROM unnest(CAST(:keys AS bigint[])) AS k"), {"keys": keys})
    held.update(keys)


def lock_key(*name: str | int) -> int:
    """The 64-bit key of ``advisory_xact_lock``'s lock on ``name``, and the order in which
    ``advisory_xact_locks`` takes several."""
    text = "\x00".join(["setia", *map(str, name)]).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big", signed=True)
