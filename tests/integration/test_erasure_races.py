"""An erasure against what runs beside it: a till's capture, a portal token issued, an
email claimed before it and sent after, an expiry notice written after it. Whatever runs
meanwhile waits for the erasure or finds the pseudonym; nothing reaches whoever enrols
next under the erased id."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import sqlalchemy as sa

from setia.adapters.db.store import UnitOfWork
from setia.adapters.mail import SmtpSettings
from setia.domain.errors import UnknownMember
from setia.service import deliveries, member_tokens, outbox, privacy, store_credit
from setia.service.events import ingest_event
from setia.service.members import upsert_member
from setia.service.redemptions import adjust, redeem
from tests.conftest import (
    KOPI_SETIA,
    assert_journal_ok,
    at,
    fixed_clock,
    load_programme,
    wait_for_lock_waiters,
)
from tests.integration.test_store_credit import CREDIT_CAFE, TILL, purchase
from tests.receivers import MailBox, smtp_server

P = "kopi-setia"
CP = CREDIT_CAFE["id"]
CLOCK = fixed_clock("2027-03-01T09:00:00+08:00")


def erasure_paused_after_relabelling(monkeypatch: pytest.MonkeyPatch
                                     ) -> tuple[threading.Event, threading.Event]:
    """erase_member pauses (uncommitted) once it has renamed her and relabelled her
    messages, until ``go`` is set."""
    paused, go = threading.Event(), threading.Event()
    real = privacy._erase_growth

    def slow(*args: Any, **kwargs: Any) -> None:
        real(*args, **kwargs)
        paused.set()
        go.wait(20)

    monkeypatch.setattr(privacy, "_erase_growth", slow)
    return paused, go


def bob_bought(engine: sa.Engine, amount: str) -> sa.Engine:
    """Credit Cafe with bob, enrolled on 1 January, who bought for ``amount`` on 1 February
    (1% of it as cashback; the quarter's rebate credited once 2027-Q1 has ended)."""
    load_programme(engine, CREDIT_CAFE)
    upsert_member(engine, CP, "bob", {"email": "bob@example.my",
                                      "enrolled_at": "2027-01-01T09:00:00+08:00"},
                  fixed_clock("2027-01-01T09:00:00+08:00"))
    ingest_event(engine, CP, purchase("e2", "bob", "2027-02-01T10:00:00+08:00", amount=amount),
                 fixed_clock("2027-02-01T10:00:00+08:00"))
    return engine


@pytest.mark.postgres
def test_a_till_capture_during_an_erasure_waits_and_names_the_pseudonym(
        pg_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given bob with store credit, 5.00 of it held at the till
    engine = bob_bought(pg_engine, "800.00")
    held = store_credit.hold(engine, CP, {"member": "bob", "amount": "5.00"}, "k1", TILL)
    paused, go = erasure_paused_after_relabelling(monkeypatch)
    # When the till captures the hold while his erasure is under way
    with ThreadPoolExecutor(2) as pool:
        erased = pool.submit(privacy.erase_member, engine, CP, "bob", "k-erase", TILL)
        assert paused.wait(20)
        till = pool.submit(store_credit.capture_or_release, engine, CP, held["id"],
                           "capture", {}, "k2", TILL)
        # Then the capture waits for his row (it did not: its message kept his old id)
        assert wait_for_lock_waiters(engine, statement_like="%FOR SHARE%", seconds=10) == 1
        go.set()
        pseudonym = erased.result(timeout=30)["member"]
        assert till.result(timeout=30)["status"] == "captured"
    # and his credit.spent message names the pseudonym, as his other messages do
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT type, member_id, data FROM outbox "
                                    "WHERE type LIKE 'credit.%' ORDER BY id")).all()
    assert [(kind, member, json.loads(data)["member"]) for kind, member, data in rows] == [
        ("credit.earned", pseudonym, pseudonym), ("credit.spent", pseudonym, pseudonym)]
    assert_journal_ok(engine)


@pytest.mark.postgres
def test_a_rebate_credited_during_an_erasure_names_the_pseudonym(
        pg_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given bob's RM 700.00 spent in the first quarter, its rebate not credited yet
    engine = bob_bought(pg_engine, "700.00")
    paused, go = erasure_paused_after_relabelling(monkeypatch)
    # When run-due credits the quarter's rebate while his erasure is under way
    with ThreadPoolExecutor(2) as pool:
        erased = pool.submit(privacy.erase_member, engine, CP, "bob", "k-erase", TILL)
        assert paused.wait(20)
        due = pool.submit(store_credit.run_due, engine, CP, at("2027-04-02T00:00:00+08:00"))
        # Then the rebate waits for his row (it read his old id and named it)
        assert wait_for_lock_waiters(engine, statement_like="%FOR SHARE%", seconds=10) == 1
        go.set()
        pseudonym = erased.result(timeout=30)["member"]
        assert due.result(timeout=30) == (0, 1)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT type, member_id, data FROM outbox "
                                    "WHERE type = 'credit.earned' ORDER BY id")).all()
    assert [(kind, member, json.loads(data)["ref"], json.loads(data)["member"])
            for kind, member, data in rows] == [
        ("credit.earned", pseudonym, "e2", pseudonym),
        ("credit.earned", pseudonym, "rebate:quarterly:2027-Q1", pseudonym)]
    assert_journal_ok(engine)


@pytest.mark.postgres
def test_a_portal_token_asked_for_during_an_erasure_is_refused(
        pg_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = pg_engine
    load_programme(engine, KOPI_SETIA)
    upsert_member(engine, P, "alice", {"email": "alice@example.my"}, CLOCK)
    paused, go = erasure_paused_after_relabelling(monkeypatch)
    with ThreadPoolExecutor(2) as pool:
        erased = pool.submit(privacy.erase_member, engine, P, "alice", "k-erase", CLOCK)
        assert paused.wait(20)
        issued = pool.submit(member_tokens.issue, engine, P, "alice", clock=CLOCK)
        # the token waits for her row (it was issued at once, after the erasure had revoked
        # her tokens, and kept working for the pseudonymous account)
        assert wait_for_lock_waiters(engine, statement_like="%FOR SHARE%", seconds=10) == 1
        go.set()
        erased.result(timeout=30)
        with pytest.raises(UnknownMember):
            issued.result(timeout=30)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM member_tokens")).scalar_one() == 0
    assert_journal_ok(engine)


class EraseWhileSending(MailBox):
    """Accepts every message; while the first is being sent, ``meanwhile`` runs once."""

    def __init__(self, meanwhile: Callable[[], None]) -> None:
        super().__init__()
        self.meanwhile: Callable[[], None] | None = meanwhile

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        if self.meanwhile is not None:
            run, self.meanwhile = self.meanwhile, None
            await asyncio.get_running_loop().run_in_executor(None, run)
        return await super().handle_DATA(server, session, envelope)  # type: ignore[no-any-return]


def test_an_email_claimed_before_an_erasure_never_reaches_who_enrols_with_the_id_next(
        kopi: sa.Engine) -> None:
    # Given bob's welcome, and alice's welcome and voucher email, claimed in one batch
    upsert_member(kopi, P, "bob", {"email": "bob@example.my"}, CLOCK)
    upsert_member(kopi, P, "alice", {"email": "alice@example.my", "name": "Alice"}, CLOCK)
    adjust(kopi, P, {"member": "alice", "points": 200, "reason": "goodwill"}, "k-1", CLOCK)
    code = redeem(kopi, P, {"member": "alice", "reward": "free-latte"}, "k-2",
                  CLOCK)["voucher"]["code"]
    now = at("2027-03-01T09:01:00+08:00")
    deliveries.dispatch(kopi, now)

    def erase_and_enrol_again() -> None:
        # while bob's email is being sent, alice is erased and someone else enrols as alice
        privacy.erase_member(kopi, P, "alice", "k-erase", CLOCK)
        upsert_member(kopi, P, "alice", {"email": "stranger@example.my", "name": "Stranger"},
                      fixed_clock("2027-03-01T09:02:00+08:00"))

    box = EraseWhileSending(erase_and_enrol_again)
    with smtp_server(box) as port:
        report = deliveries.deliver_emails(kopi, now, SmtpSettings(host="127.0.0.1", port=port))
    # Then only bob's email went: the stranger was sent alice's welcome and her voucher
    assert [message["To"] for message in box.messages] == ["bob@example.my"]
    assert not any(code in message.get_content() for message in box.messages)
    assert (report.delivered, report.dropped, report.failed) == (1, 2, 0)
    assert_journal_ok(kopi)


class RefuseRecipients(MailBox):
    """Refuses every recipient, as a mail server does an address that no longer exists."""

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,  # noqa: N802
                          rcpt_options: Any) -> str:
        return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"


def test_an_erasure_clears_a_delivery_error_quoting_an_address_she_had_before(
        kopi: sa.Engine) -> None:
    # Given alice's welcome refused by the mail server, which quotes her address
    upsert_member(kopi, P, "alice", {"email": "alice.old@example.my"}, CLOCK)
    now = at("2027-03-01T09:01:00+08:00")
    deliveries.dispatch(kopi, now)
    with smtp_server(RefuseRecipients()) as port:
        report = deliveries.deliver_emails(kopi, now, SmtpSettings(host="127.0.0.1", port=port))
    assert report.failed == 1
    with kopi.connect() as conn:
        assert "alice.old@example.my" in conn.execute(sa.text(
            "SELECT last_error FROM deliveries WHERE channel = 'email'")).scalar_one()
    # and so she gave her new address before she asked to be erased
    upsert_member(kopi, P, "alice", {"email": "alice.new@example.my"}, CLOCK)
    privacy.erase_member(kopi, P, "alice", "k-erase", CLOCK)
    # Then no delivery error of hers is kept (the old address was kept: only errors that
    # quoted the address she had at the erasure were cleared)
    with kopi.connect() as conn:
        assert conn.execute(sa.text("SELECT last_error FROM deliveries WHERE channel = 'email'")
                            ).scalars().all() == [None]
    assert_journal_ok(kopi)


def test_an_erased_members_expiry_notice_is_not_queued_a_second_time(kopi: sa.Engine) -> None:
    # Given alice's points expiring within 30 days, told to her by run-due once
    upsert_member(kopi, P, "alice", {"email": "a@example.my"}, CLOCK)
    adjust(kopi, P, {"member": "alice", "points": 200, "reason": "goodwill"}, "k-1", CLOCK)
    with UnitOfWork(kopi) as uow:
        programme = uow.programme(P)
    assert outbox.expiring_soon(kopi, programme, at("2027-08-10T09:00:00+08:00")) == 1
    # When she is erased and run-due runs again the next day
    pseudonym = privacy.erase_member(kopi, P, "alice", "k-erase", CLOCK)["member"]
    made = outbox.expiring_soon(kopi, programme, at("2027-08-11T09:00:00+08:00"))
    # Then the notice is not queued again under her pseudonym (its key named her id)
    assert made == 0
    with kopi.connect() as conn:
        assert conn.execute(sa.text("SELECT member_id FROM outbox "
                                    "WHERE type = 'points.expiring'")).scalars().all() == [
            pseudonym]
    assert_journal_ok(kopi)
