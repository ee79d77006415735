"""Web accounts: staff users (argon2id), browser sessions with a CSRF token each,
login throttling, members' one-time sign-in links and chosen language.

Secrets (session cookies, link tokens) are stored only as SHA-256 digests.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from setia.adapters.db import tables as t
from setia.adapters.db import tables_web as w
from setia.adapters.db.store import UnitOfWork
from setia.domain.errors import InvalidField, SetiaError
from setia.service.common import Clock, advisory_xact_locks, transaction, utc_now

ROLES = ("owner", "cashier")
USERNAME = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")
MIN_PASSWORD = 10
SESSION_HOURS = 12
LINK_MINUTES = 15
THROTTLE_WINDOW = timedelta(minutes=15)
MAX_USER_FAILURES = 5  # per username in the window
MAX_IP_FAILURES = 20  # per client address in the window
MAX_LINKS = 3  # sign-in links per member email in the window
_hasher = PasswordHasher()  # argon2id with the library's (RFC 9106 low-memory) defaults
# A hash to verify against when the user does not exist, so both answers take as long
# (made on first use: hashing takes a moment).
_DUMMY_HASH: str | None = None


def _dummy_hash() -> str:
    global _DUMMY_HASH
    if _DUMMY_HASH is None:
        _DUMMY_HASH = _hasher.hash("not a password of anyone")
    return _DUMMY_HASH


class TooManyAttempts(SetiaError):
    type = "too-many-attempts"
    title = "Too many attempts"
    status = 429


class SignInFailed(SetiaError):
    type = "sign-in-failed"
    title = "Wrong username or password"
    status = 401


class LinkInvalid(SetiaError):
    type = "sign-in-link-invalid"
    title = "The sign-in link is not valid"
    status = 400


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class Session:
    kind: str  # staff | member
    csrf: str
    username: str | None = None
    role: str | None = None
    staff_program: str | None = None  # a staff user's only programme, or None for all
    program_id: str | None = None  # a member session's programme
    member_id: str | None = None

    def may_use(self, program_id: str) -> bool:
        if self.kind == "member":
            return self.program_id == program_id
        return self.staff_program is None or self.staff_program == program_id


# ----------------------------------------------------------------------------- staff users


def create_user(engine: sa.Engine, username: str, password: str, role: str,
                program_id: str | None = None, clock: Clock = utc_now) -> dict[str, Any]:
    if not USERNAME.fullmatch(username):
        raise InvalidField("username: 2-64 lower-case letters, digits, . _ -", field="username")
    if role not in ROLES:
        raise InvalidField(f"role must be one of {', '.join(ROLES)}", field="role")
    if len(password) < MIN_PASSWORD:
        raise InvalidField(f"the password needs at least {MIN_PASSWORD} characters",
                           field="password")
    hashed = _hasher.hash(password)

    def work(uow: UnitOfWork) -> dict[str, Any]:
        exists = uow.execute(sa.select(w.staff_users.c.username)
                             .where(w.staff_users.c.username == username)).scalar()
        if exists:
            raise InvalidField(f"user {username!r} already exists", field="username")
        if program_id is not None and uow.execute(
                sa.select(t.programs.c.id).where(t.programs.c.id == program_id)).scalar() is None:
            raise InvalidField(f"no programme {program_id!r}", field="program")
        uow.execute(w.staff_users.insert().values(
            username=username, password_hash=hashed, role=role, program_id=program_id,
            created_at=clock()))
        uow.commit()
        return {"username": username, "role": role, "program": program_id}

    return transaction(engine, work)


def list_users(engine: sa.Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(w.staff_users).order_by(w.staff_users.c.username)).all()
    return [{"username": r.username, "role": r.role, "program": r.program_id,
             "disabled": r.disabled_at is not None} for r in rows]


def disable_user(engine: sa.Engine, username: str, clock: Clock = utc_now) -> None:
    """Refuse the account's sign-ins from now on and end its sessions."""
    def work(uow: UnitOfWork) -> None:
        done = uow.execute(w.staff_users.update().where(
            w.staff_users.c.username == username, w.staff_users.c.disabled_at.is_(None))
            .values(disabled_at=clock())).rowcount
        if not done:
            raise InvalidField(f"no enabled user {username!r}", field="username")
        uow.execute(w.web_sessions.delete().where(w.web_sessions.c.username == username))
        uow.commit()

    transaction(engine, work)


def _failures(uow: UnitOfWork, key: str, now: datetime) -> int:
    return int(uow.execute(sa.select(sa.func.count()).select_from(w.login_failures).where(
        w.login_failures.c.key == key, w.login_failures.c.at > now - THROTTLE_WINDOW)).scalar_one())


def _prune_failures(uow: UnitOfWork, now: datetime) -> None:
    """Delete the rows two throttle windows old, as each new one is written (a server
    whose clock runs behind still counts a row one window old): the table then holds
    about two windows' rows, and no email (``link:`` keys), user name or address stays
    much longer than it is needed for."""
    uow.execute(w.login_failures.delete().where(
        w.login_failures.c.at <= now - 2 * THROTTLE_WINDOW))


def _throttle(uow: UnitOfWork, limits: dict[str, int], now: datetime, error: str,
              field: str) -> list[int]:
    """Count each key's rows in the window and, when every key is under its limit, add one
    row per key (their ids); else refuse with TooManyAttempts. Each key's advisory lock is
    held to the commit, so concurrent tries of one key are counted one after another: no
    two see the same count (SQLite has one writer and needs no lock)."""
    advisory_xact_locks(uow, [("throttle", key) for key in limits])
    if any(_failures(uow, key, now) >= limit for key, limit in limits.items()):
        raise TooManyAttempts(error, field=field, retry_after=int(THROTTLE_WINDOW.seconds))
    _prune_failures(uow, now)
    return [uow.execute(w.login_failures.insert().values(key=key, at=now)
                        .returning(w.login_failures.c.id)).scalar_one() for key in limits]


def sign_in(engine: sa.Engine, username: str, password: str, client: str,
            clock: Clock = utc_now) -> tuple[str, Session]:
    """Check a staff user's password; answers a new session's cookie value and the session.
    Five failures for one username (or twenty from one address) within 15 minutes refuse
    further tries, right or wrong, until the window has passed.

    A try is recorded as a failure before the password is checked: one transaction takes
    the username's and the address's throttle locks, counts, adds a failure row for each
    and commits (releasing the locks); argon2 then runs with no lock or transaction open,
    and a right password deletes the try's two rows. So concurrent tries are counted one
    by one and no more than five wrong passwords for a username are checked in a window; a
    right password counts as a failure only while it is being checked."""
    now = clock()
    user_key, ip_key = f"user:{username.lower()[:64]}", f"ip:{client[:64]}"

    def record(uow: UnitOfWork) -> tuple[list[int], Any]:
        attempt = _throttle(uow, {user_key: MAX_USER_FAILURES, ip_key: MAX_IP_FAILURES}, now,
                            "too many failed sign-ins; try again in 15 minutes", "username")
        row = uow.execute(sa.select(w.staff_users).where(
            w.staff_users.c.username == username.lower())).one_or_none()
        uow.commit()
        return attempt, row

    attempt, row = transaction(engine, record)
    ok: bool
    try:
        ok = _hasher.verify(row.password_hash if row else _dummy_hash(), password)
    except (VerificationError, InvalidHashError):
        ok = False
    if not ok or row is None or row.disabled_at is not None:
        raise SignInFailed("wrong username or password", field="password")
    new_hash = _hasher.hash(password) if _hasher.check_needs_rehash(row.password_hash) else None

    def succeed(uow: UnitOfWork) -> None:
        uow.execute(w.login_failures.delete().where(w.login_failures.c.id.in_(attempt)))
        if new_hash is not None:
            uow.execute(w.staff_users.update().where(
                w.staff_users.c.username == row.username).values(password_hash=new_hash))
        uow.commit()

    transaction(engine, succeed)
    return _new_session(engine, now, kind="staff", username=row.username)


def _new_session(engine: sa.Engine, now: datetime, **values: Any) -> tuple[str, Session]:
    cookie = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(24)

    def work(uow: UnitOfWork) -> None:
        uow.execute(w.web_sessions.insert().values(
            id_hash=_digest(cookie), csrf=csrf, created_at=now,
            expires_at=now + timedelta(hours=SESSION_HOURS), **values))
        uow.commit()

    transaction(engine, work)
    found = session_for(engine, cookie, clock=lambda: now)
    assert found is not None
    return cookie, found


def session_for(engine: sa.Engine, cookie: str | None, clock: Clock = utc_now) -> Session | None:
    if not cookie:
        return None
    now = clock()
    s, u = w.web_sessions, w.staff_users
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(s, u.c.role, u.c.program_id.label("staff_program"), u.c.disabled_at)
            .select_from(s.outerjoin(u, u.c.username == s.c.username))
            .where(s.c.id_hash == _digest(cookie), s.c.expires_at > now)).one_or_none()
    if row is None:
        return None
    if row.kind == "staff":
        if row.role is None or row.disabled_at is not None:
            return None
        return Session("staff", row.csrf, username=row.username, role=row.role,
                       staff_program=row.staff_program)
    return Session("member", row.csrf, program_id=row.program_id, member_id=row.member_id)


def sign_out(engine: sa.Engine, cookie: str | None) -> None:
    if cookie:
        with engine.begin() as conn:
            conn.execute(w.web_sessions.delete().where(w.web_sessions.c.id_hash == _digest(cookie)))


# ----------------------------------------------------------------------------- members


def link_throttle_key(program_id: str, email: str) -> str:
    """The throttle row key of the sign-in links asked for an email (it holds the email:
    an erasure deletes them, ``privacy``)."""
    return f"link:{program_id}:{email.strip().lower()[:320]}"


def request_link(engine: sa.Engine, program_id: str, email: str,
                 clock: Clock = utc_now) -> tuple[str, str] | None:
    """A one-time sign-in token for the member with this email: (member id, token), or
    None when no member has it. At most three links per email in 15 minutes, counted and
    recorded under the email's throttle lock in one transaction (``_throttle``)."""
    now = clock()
    email = email.strip()
    key = link_throttle_key(program_id, email)

    def work(uow: UnitOfWork) -> tuple[str, str] | None:
        _throttle(uow, {key: MAX_LINKS}, now,
                  "too many sign-in links asked for; try again in 15 minutes", "email")
        member_id = uow.execute(sa.select(t.members.c.id).where(
            t.members.c.program_id == program_id,
            sa.func.lower(t.members.c.email) == email.lower()).order_by(t.members.c.pk)
            .limit(1)).scalar()
        if member_id is None:
            uow.commit()
            return None
        token = secrets.token_urlsafe(32)
        uow.execute(w.signin_links.insert().values(
            token_hash=_digest(token), program_id=program_id, member_id=member_id,
            created_at=now, expires_at=now + timedelta(minutes=LINK_MINUTES)))
        uow.commit()
        return member_id, token

    return transaction(engine, work)


def use_link(engine: sa.Engine, program_id: str, token: str,
             clock: Clock = utc_now) -> tuple[str, Session]:
    """Spend a sign-in link (once, before it expires) for a member session."""
    now = clock()
    links = w.signin_links

    def work(uow: UnitOfWork) -> str:
        spent = uow.execute(links.update().where(
            links.c.token_hash == _digest(token), links.c.program_id == program_id,
            links.c.used_at.is_(None), links.c.expires_at > now).values(used_at=now)
            .returning(links.c.member_id)).scalar()
        if spent is None:
            raise LinkInvalid("this sign-in link was used already, has expired or is unknown",
                              field="token")
        uow.commit()
        return str(spent)

    member_id = transaction(engine, work)
    return _new_session(engine, now, kind="member", program_id=program_id, member_id=member_id)


def member_locale(engine: sa.Engine, program_id: str, member_id: str) -> str | None:
    with engine.connect() as conn:
        return conn.execute(sa.select(w.member_locales.c.locale).where(
            w.member_locales.c.program_id == program_id,
            w.member_locales.c.member_id == member_id)).scalar()


def set_member_locale(engine: sa.Engine, program_id: str, member_id: str, locale: str) -> None:
    def work(uow: UnitOfWork) -> None:
        where = (w.member_locales.c.program_id == program_id,
                 w.member_locales.c.member_id == member_id)
        if uow.execute(sa.select(w.member_locales.c.locale).where(*where)).scalar() is None:
            uow.execute(w.member_locales.insert().values(
                program_id=program_id, member_id=member_id, locale=locale))
        else:
            uow.execute(w.member_locales.update().where(*where).values(locale=locale))
        uow.commit()

    transaction(engine, work)
