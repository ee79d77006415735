"""Staff accounts, sessions, throttling and members' one-time sign-in links, on SQLite
and PostgreSQL; a PostgreSQL race proves a link signs in exactly once."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
import sqlalchemy as sa

from setia.adapters.db import tables_web as w
from setia.domain.errors import InvalidField
from setia.service import members, staff
from tests.browser.web_server import WEB_CAFE
from tests.conftest import assert_journal_ok, at, load_programme

NOW = at("2027-03-01T10:00:00+08:00")


@pytest.fixture(autouse=True)
def quick_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    """argon2id with small costs, so that dozens of sign-ins stay quick; the browser tests
    use the real costs."""
    from argon2 import PasswordHasher

    quick = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    monkeypatch.setattr(staff, "_hasher", quick)
    monkeypatch.setattr(staff, "_DUMMY_HASH", quick.hash("not a password"))


def clock(minutes: float = 0):  # type: ignore[no-untyped-def]
    moment = NOW + timedelta(minutes=minutes)
    return lambda: moment


def test_passwords_are_argon2_hashes_and_accounts_are_checked(engine: sa.Engine) -> None:
    load_programme(engine, WEB_CAFE)
    created = staff.create_user(engine, "owner", "a-long-password", "owner", clock=clock())
    assert created == {"username": "owner", "role": "owner", "program": None}
    with engine.connect() as conn:
        stored = conn.execute(sa.select(w.staff_users.c.password_hash)).scalar_one()
    assert stored.startswith("$argon2id$") and "a-long-password" not in stored
    for username, password, role, program, field in [
        ("owner", "a-long-password", "owner", None, "username"),  # exists already
        ("X", "a-long-password", "owner", None, "username"),
        ("till", "short", "cashier", None, "password"),
        ("till", "a-long-password", "manager", None, "role"),
        ("till", "a-long-password", "cashier", "no-such", "program"),
    ]:
        with pytest.raises(InvalidField) as caught:
            staff.create_user(engine, username, password, role, program)
        assert caught.value.field == field
    assert staff.list_users(engine) == [
        {"username": "owner", "role": "owner", "program": None, "disabled": False}]


def test_sign_in_session_and_sign_out(engine: sa.Engine) -> None:
    load_programme(engine, WEB_CAFE)
    staff.create_user(engine, "till", "a-long-password", "cashier", "web-cafe")
    cookie, session = staff.sign_in(engine, "till", "a-long-password", "10.0.0.1", clock())
    assert (session.kind, session.username, session.role) == ("staff", "till", "cashier")
    assert session.may_use("web-cafe") and not session.may_use("other")
    found = staff.session_for(engine, cookie, clock(60))
    assert found == session
    assert staff.session_for(engine, cookie, clock(12 * 60 + 1)) is None  # expired
    assert staff.session_for(engine, cookie + "x", clock()) is None
    with engine.connect() as conn:  # only a digest of the cookie is stored
        assert conn.execute(sa.select(w.web_sessions.c.id_hash)).scalar_one() != cookie
    staff.sign_out(engine, cookie)
    assert staff.session_for(engine, cookie, clock()) is None


def test_a_disabled_account_is_signed_out_and_cannot_sign_in(engine: sa.Engine) -> None:
    staff.create_user(engine, "till", "a-long-password", "cashier")
    cookie, _ = staff.sign_in(engine, "till", "a-long-password", "10.0.0.1", clock())
    staff.disable_user(engine, "till", clock())
    assert staff.session_for(engine, cookie, clock()) is None
    with pytest.raises(staff.SignInFailed):
        staff.sign_in(engine, "till", "a-long-password", "10.0.0.1", clock())
    with pytest.raises(InvalidField):
        staff.disable_user(engine, "till")
    assert staff.list_users(engine)[0]["disabled"] is True


def test_five_failures_lock_the_username_for_15_minutes(engine: sa.Engine) -> None:
    staff.create_user(engine, "owner", "a-long-password", "owner")
    for attempt in range(5):
        with pytest.raises(staff.SignInFailed):
            staff.sign_in(engine, "owner", f"wrong-{attempt}", "10.0.0.1", clock(attempt))
    with pytest.raises(staff.TooManyAttempts):  # the right password, but too late
        staff.sign_in(engine, "owner", "a-long-password", "10.0.0.2", clock(5))
    # The first failure leaves the window at minute 15: four remain, one try is allowed.
    staff.sign_in(engine, "owner", "a-long-password", "10.0.0.2", clock(15.5))
    with pytest.raises(staff.SignInFailed):  # an unknown user fails the same way
        staff.sign_in(engine, "nobody", "a-long-password", "10.0.0.3", clock(16))


def test_twenty_failures_from_one_address_lock_it(engine: sa.Engine) -> None:
    staff.create_user(engine, "owner", "a-long-password", "owner")
    for attempt in range(20):
        with pytest.raises(staff.SignInFailed):
            staff.sign_in(engine, f"user{attempt}", "x" * 10, "10.9.9.9", clock())
    with pytest.raises(staff.TooManyAttempts):
        staff.sign_in(engine, "owner", "a-long-password", "10.9.9.9", clock())
    staff.sign_in(engine, "owner", "a-long-password", "10.0.0.1", clock())


def test_a_sign_in_link_works_once_and_for_15_minutes(engine: sa.Engine) -> None:
    load_programme(engine, WEB_CAFE)
    members.upsert_member(engine, "web-cafe", "m1", {"email": "Siti@Example.com"}, clock())
    assert staff.request_link(engine, "web-cafe", "nobody@example.com", clock()) is None
    member_id, token = staff.request_link(engine, "web-cafe", "siti@example.com ", clock())
    assert member_id == "m1"
    cookie, session = staff.use_link(engine, "web-cafe", token, clock(14))
    assert (session.kind, session.program_id, session.member_id) == ("member", "web-cafe", "m1")
    assert staff.session_for(engine, cookie, clock(15)) == session
    with pytest.raises(staff.LinkInvalid):
        staff.use_link(engine, "web-cafe", token, clock(14))  # used already
    _, late = staff.request_link(engine, "web-cafe", "siti@example.com", clock(1))
    with pytest.raises(staff.LinkInvalid):
        staff.use_link(engine, "web-cafe", late, clock(16.5))  # expired
    with pytest.raises(staff.LinkInvalid):
        staff.use_link(engine, "other", late, clock(2))  # another programme's link
    assert staff.request_link(engine, "web-cafe", "siti@example.com", clock(1.5)) is not None
    with pytest.raises(staff.TooManyAttempts):  # a fourth link in 15 minutes
        staff.request_link(engine, "web-cafe", "siti@example.com", clock(2))
    assert staff.request_link(engine, "web-cafe", "siti@example.com", clock(15.5)) is not None
    assert_journal_ok(engine)


def test_a_member_keeps_a_chosen_language(engine: sa.Engine) -> None:
    assert staff.member_locale(engine, "web-cafe", "m1") is None
    staff.set_member_locale(engine, "web-cafe", "m1", "id")
    staff.set_member_locale(engine, "web-cafe", "m1", "zh_Hant")
    assert staff.member_locale(engine, "web-cafe", "m1") == "zh_Hant"


@pytest.mark.postgres
def test_one_link_used_by_eight_browsers_at_once_signs_in_once(pg_engine: sa.Engine) -> None:
    load_programme(pg_engine, WEB_CAFE)
    members.upsert_member(pg_engine, "web-cafe", "m1", {"email": "m1@example.com"}, clock())
    _, token = staff.request_link(pg_engine, "web-cafe", "m1@example.com", clock())
    start = threading.Barrier(8)
    outcomes: list[str] = []
    lock = threading.Lock()

    def use() -> None:
        start.wait()
        try:
            staff.use_link(pg_engine, "web-cafe", token, clock(1))
            outcome = "signed-in"
        except staff.LinkInvalid:
            outcome = "refused"
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=use) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes) == ["refused"] * 7 + ["signed-in"]
    with pg_engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(w.web_sessions)).scalar() == 1


def _race(count: int, attempt) -> list[str]:  # type: ignore[no-untyped-def]
    """Run ``attempt`` in ``count`` threads released together; the outcome of each."""
    start = threading.Barrier(count)
    outcomes: list[str] = []
    lock = threading.Lock()

    def run() -> None:
        start.wait()
        outcome = attempt()
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return sorted(outcomes)


@pytest.mark.postgres
def test_twelve_wrong_passwords_at_once_check_only_five(pg_engine: sa.Engine,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # given argon2 at its real cost, so that each check is slow enough for the others to
    # read the count meanwhile, as they would on a real server
    from argon2 import PasswordHasher

    checked = threading.Semaphore(0)  # one release per password checked

    class Counting(PasswordHasher):
        def verify(self, hash: str | bytes, password: str | bytes) -> bool:  # noqa: A002
            checked.release()
            return super().verify(hash, password)

    real = Counting()
    monkeypatch.setattr(staff, "_hasher", real)
    monkeypatch.setattr(staff, "_DUMMY_HASH", real.hash("not a password"))
    staff.create_user(pg_engine, "owner", "a-long-password", "owner")

    def wrong_password() -> str:
        try:
            staff.sign_in(pg_engine, "owner", "wrong-password", "10.0.0.1", clock())
        except staff.SignInFailed:
            return "failed"
        except staff.TooManyAttempts:
            return "throttled"
        return "signed-in"

    # when twelve browsers try a wrong password for one username at once
    outcomes = _race(12, wrong_password)
    # then five are checked and the other seven refused unchecked
    assert outcomes == ["failed"] * 5 + ["throttled"] * 7
    assert sum(checked.acquire(blocking=False) for _ in range(12)) == 5
    with pg_engine.connect() as conn:
        rows = conn.execute(sa.select(w.login_failures.c.key, sa.func.count())
                            .group_by(w.login_failures.c.key)).all()
    assert sorted(rows) == [("ip:10.0.0.1", 5), ("user:owner", 5)]
    with pytest.raises(staff.TooManyAttempts):  # the right password is refused too
        staff.sign_in(pg_engine, "owner", "a-long-password", "10.0.0.2", clock(1))


@pytest.mark.postgres
def test_eight_link_requests_at_once_send_three_links(pg_engine: sa.Engine) -> None:
    load_programme(pg_engine, WEB_CAFE)
    members.upsert_member(pg_engine, "web-cafe", "m1", {"email": "m1@example.com"}, clock())

    def ask() -> str:
        try:
            found = staff.request_link(pg_engine, "web-cafe", "m1@example.com", clock())
        except staff.TooManyAttempts:
            return "throttled"
        return "link" if found is not None else "none"

    assert _race(8, ask) == ["link"] * 3 + ["throttled"] * 5
    with pg_engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(w.signin_links)).scalar() == 3


def test_a_right_password_leaves_no_failure_behind(engine: sa.Engine) -> None:
    # given four failures for the username
    staff.create_user(engine, "owner", "a-long-password", "owner")
    for attempt in range(4):
        with pytest.raises(staff.SignInFailed):
            staff.sign_in(engine, "owner", f"wrong-{attempt}", "10.0.0.1", clock())
    # when the right password signs in, twice, then a wrong one fails
    staff.sign_in(engine, "owner", "a-long-password", "10.0.0.1", clock(1))
    staff.sign_in(engine, "owner", "a-long-password", "10.0.0.1", clock(2))
    with pytest.raises(staff.SignInFailed):
        staff.sign_in(engine, "owner", "wrong-again", "10.0.0.1", clock(3))
    # then only the five failures are counted: the sixth try is refused
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(w.login_failures).where(
            w.login_failures.c.key == "user:owner")).scalar() == 5
    with pytest.raises(staff.TooManyAttempts):
        staff.sign_in(engine, "owner", "a-long-password", "10.0.0.1", clock(4))
