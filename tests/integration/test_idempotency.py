"""Idempotency: the event id, or the Idempotency-Key of other commands, makes a write once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import sqlalchemy as sa

from setia.domain.errors import IdempotencyConflict, RedemptionNotHeld
from setia.service.events import ingest_event
from setia.service.members import get_member, upsert_member
from setia.service.redemptions import adjust, capture_or_release, redeem, use_voucher
from tests.conftest import (
    KOPI_SETIA,
    assert_journal_ok,
    fixed_clock,
    load_programme,
    wait_for_lock_waiters,
)

P = "kopi-setia"
CLOCK = fixed_clock("2027-03-01T09:00:00+08:00")
LATER = fixed_clock("2027-03-20T09:00:00+08:00")


def counts(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            table: conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
            for table in ("postings", "events", "orders", "redemptions", "vouchers", "commands")
        }


def balances(engine: sa.Engine) -> dict[str, int]:
    return get_member(engine, P, "cust-1", CLOCK)["balances"]


def purchase(amount: str = "42.50") -> dict[str, Any]:
    return {"id": "till-7-000123", "type": "purchase", "member": "cust-1", "order_id": "o1",
            "occurred_at": "2027-03-02T10:00:00+08:00", "amount": amount}


def given_a_member_with(engine: sa.Engine, points: int) -> None:
    upsert_member(engine, P, "cust-1", {}, CLOCK)
    adjust(engine, P, {"member": "cust-1", "points": points, "reason": "opening"}, "open", CLOCK)


def test_a_replayed_event_answers_its_first_result_and_changes_nothing(kopi):
    # Given a purchase applied once: base 42 + first-visit 100
    upsert_member(kopi, P, "cust-1", {}, CLOCK)
    first = ingest_event(kopi, P, purchase(), CLOCK)
    before = counts(kopi)

    # When the same event arrives again, later
    again = ingest_event(kopi, P, purchase(), LATER)

    # Then the first result comes back marked replayed, and nothing changed
    assert first["status"] == "applied"
    assert again == {**first, "status": "replayed"}
    assert again["points"] == 142
    assert counts(kopi) == before
    assert balances(kopi) == {"available": 0, "pending": 50 + 142, "reserved": 0}
    assert_journal_ok(kopi)


def test_an_event_id_reused_for_another_event_is_refused_and_changes_nothing(kopi):
    upsert_member(kopi, P, "cust-1", {}, CLOCK)
    ingest_event(kopi, P, purchase(), CLOCK)
    before = counts(kopi)

    # When the same id comes with another amount
    with pytest.raises(IdempotencyConflict) as error:
        ingest_event(kopi, P, purchase("99.00"), CLOCK)

    # Then it is refused naming the id, and nothing changed
    assert error.value.field == "id"
    assert counts(kopi) == before
    assert balances(kopi) == {"available": 0, "pending": 192, "reserved": 0}
    assert_journal_ok(kopi)


def test_a_replayed_redemption_answers_the_same_redemption_and_voucher(kopi):
    given_a_member_with(kopi, 1000)
    first = redeem(kopi, P, {"member": "cust-1", "reward": "free-latte"}, "redeem-1", CLOCK)
    before = counts(kopi)

    # When the same key and body come again
    again = redeem(kopi, P, {"member": "cust-1", "reward": "free-latte"}, "redeem-1", LATER)

    # Then the same redemption and voucher answer; the points were taken once
    assert again == first
    assert counts(kopi) == before
    assert balances(kopi)["available"] == 850
    assert_journal_ok(kopi)


def test_a_redeem_key_reused_for_another_request_is_refused_and_changes_nothing(kopi):
    given_a_member_with(kopi, 1000)
    redeem(kopi, P, {"member": "cust-1", "reward": "free-latte"}, "redeem-1", CLOCK)
    before = counts(kopi)

    # When the key comes with another body
    with pytest.raises(IdempotencyConflict) as error:
        redeem(kopi, P, {"member": "cust-1", "reward": "rm10-off"}, "redeem-1", CLOCK)

    # Then it is refused naming the header, and nothing changed
    assert error.value.field == "Idempotency-Key"
    assert counts(kopi) == before
    assert balances(kopi)["available"] == 850
    assert_journal_ok(kopi)


def test_a_replayed_adjustment_counts_once_and_another_body_is_refused(kopi):
    given_a_member_with(kopi, 1000)
    body = {"member": "cust-1", "points": 25, "reason": "sorry"}
    first = adjust(kopi, P, body, "adj-1", CLOCK)
    before = counts(kopi)

    assert adjust(kopi, P, body, "adj-1", CLOCK) == first
    with pytest.raises(IdempotencyConflict) as error:
        adjust(kopi, P, {**body, "points": 26}, "adj-1", CLOCK)

    assert error.value.field == "Idempotency-Key"
    assert counts(kopi) == before
    assert balances(kopi)["available"] == 1025
    assert_journal_ok(kopi)


def a_latte_held_and_captured(kopi):
    """A member with 1,000 points whose free latte was held (key h1) and captured (c1)."""
    given_a_member_with(kopi, 1000)
    held = redeem(kopi, P, {"member": "cust-1", "reward": "free-latte", "hold": True}, "h1",
                  CLOCK)
    return held, capture_or_release(kopi, P, held["id"], "capture", "c1", CLOCK)


def test_a_replayed_capture_answers_again_and_a_new_capture_is_refused(kopi):
    held, captured = a_latte_held_and_captured(kopi)
    before = counts(kopi)

    # When the capture is replayed, and a release is tried with a new key
    assert capture_or_release(kopi, P, held["id"], "capture", "c1", CLOCK) == captured
    with pytest.raises(RedemptionNotHeld) as error:
        capture_or_release(kopi, P, held["id"], "release", "r1", CLOCK)

    # Then one voucher exists and the points stay redeemed
    assert error.value.field == "id"
    assert counts(kopi) == before
    assert balances(kopi) == {"available": 850, "pending": 50, "reserved": 0}
    assert_journal_ok(kopi)


def test_a_capture_key_sent_again_with_a_release_is_refused_and_changes_nothing(kopi):
    # Given a free latte held and then captured with key "c1"
    held, captured = a_latte_held_and_captured(kopi)
    before = counts(kopi)

    # When a release of the same redemption comes with that key: the same body,
    # {"redemption": id}, but another operation
    with pytest.raises(IdempotencyConflict) as error:
        capture_or_release(kopi, P, held["id"], "release", "c1", LATER)

    # Then it is refused naming the header (not answered as the capture's replay), and
    # nothing changed: the latte stays captured, its points redeemed
    assert error.value.field == "Idempotency-Key"
    assert error.value.status == 409
    assert captured["status"] == "captured"
    assert counts(kopi) == before
    assert balances(kopi) == {"available": 850, "pending": 50, "reserved": 0}
    with kopi.connect() as conn:
        assert conn.execute(sa.text("SELECT status FROM redemptions WHERE id = :id"),
                            {"id": held["id"]}).scalar_one() == "captured"
    assert_journal_ok(kopi)


def a_used_voucher(engine: sa.Engine) -> tuple[str, dict[str, Any]]:
    """cust-1's free latte, used with key "use-1": its code and the use's answer."""
    given_a_member_with(engine, 1000)
    code = redeem(engine, P, {"member": "cust-1", "reward": "free-latte"}, "k1",
                  CLOCK)["voucher"]["code"]
    return code, use_voucher(engine, P, code, "use-1", clock=CLOCK)


def test_a_voucher_use_retried_with_its_code_typed_another_way_answers_again(kopi):
    code, used = a_used_voucher(kopi)
    before = counts(kopi)

    # The till's retry reads the code in lower case, in groups of four
    typed = "-".join(code[i:i + 4] for i in range(0, len(code), 4)).lower()
    assert use_voucher(kopi, P, typed, "use-1", clock=LATER) == used
    assert counts(kopi) == before
    assert_journal_ok(kopi)


def test_a_replayed_voucher_use_answers_again(kopi):
    code, used = a_used_voucher(kopi)
    before = counts(kopi)

    assert use_voucher(kopi, P, code, "use-1", clock=LATER) == used
    assert counts(kopi) == before
    assert_journal_ok(kopi)


@pytest.mark.postgres
def test_a_voucher_use_retried_while_the_first_is_still_running_answers_the_first(pg_engine):
    # Given a voucher, and a till's use of it with key "use-1" that has used it but not yet
    # committed: held at its last write (its voucher.used message) by another transaction
    # that holds the same outbox key uncommitted
    engine = pg_engine
    load_programme(engine, KOPI_SETIA)
    given_a_member_with(engine, 1000)
    code = redeem(engine, P, {"member": "cust-1", "reward": "free-latte"}, "k1",
                  CLOCK)["voucher"]["code"]
    blocker = engine.connect()
    blocker.begin()
    blocker.execute(sa.text(
        "INSERT INTO outbox (program_id, key, type, member_id, data, occurred_at, created_at) "
        "VALUES (:p, :key, 'voucher.used', 'cust-1', '{}', now(), now())"),
        {"p": P, "key": f"voucher.used:{code}"})
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(use_voucher, engine, P, code, "use-1", None, CLOCK)
        assert wait_for_lock_waiters(engine, 1, seconds=10) == 1

        # When the till, its answer late, sends the same use again with the same key: it
        # finds no key stored yet and waits for the voucher's row, which the first holds
        again = pool.submit(use_voucher, engine, P, code, "use-1", None, LATER)
        assert wait_for_lock_waiters(engine, 2, seconds=10) == 2
        blocker.rollback()
        blocker.close()
        used = first.result(timeout=30)
        answered = again.result(timeout=30)

    # Then the retry answers the first use (it answered 409 voucher-used: the till's own
    # use, refused to the customer), and the voucher was used once
    assert used["code"] == code
    assert answered == used
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT used_ref FROM vouchers WHERE code = :c"),
                            {"c": code}).scalar_one() == "use-1"
        assert conn.execute(sa.text("SELECT count(*) FROM outbox WHERE type = 'voucher.used'")
                            ).scalar_one() == 1
    assert_journal_ok(engine)
