"""The outbox: one row per member-visible change, in the same transaction; deliveries to
a real webhook receiver (signatures verified) and a real SMTP server, with retries,
dead letters and replay."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from setia.adapters.db import tables_outbox
from setia.adapters.mail import SmtpSettings
from setia.domain.errors import InsufficientPoints
from setia.service import deliveries, outbox
from setia.service.events import ingest_event
from setia.service.members import upsert_member
from setia.service.redemptions import adjust, redeem, use_voucher
from setia.service.run_due import run_due
from tests.conftest import assert_journal_ok, at, fixed_clock, load_programme, wait_for_lock_waiters
from tests.receivers import MailBox, WebhookReceiver, free_port, smtp_server, webhook_receiver

P = "shop"
SHOP: dict[str, Any] = {
    "id": P, "name": "Kedai Kopi", "currency": "MYR", "timezone": "Asia/Kuala_Lumpur",
    "locale": "ms",
    "points": {"name": "Mata", "pending_days": 0, "expiry": {"policy": "rolling", "months": 1}},
    "earn": [{"id": "base", "on": "purchase", "rate": 1},
             {"id": "welcome", "on": "signup", "points": 50}],
    "tiers": {"metric": "spend", "window": "calendar_year",
              "levels": [{"id": "member", "name": "Ahli", "threshold": 0},
                         {"id": "gold", "name": "Emas", "threshold": 100}]},
    "rewards": [{"id": "latte", "name": "Latte percuma", "cost": 100,
                 "voucher": {"free_item": "latte", "valid_days": 30}}],
}
MAR1 = fixed_clock("2027-03-01T10:00:00+08:00")


def rows(engine: sa.Engine) -> list[tuple[Any, ...]]:
    """(type, member, points or None, ref or None) of every outbox row, in order."""
    with engine.connect() as conn:
        found = conn.execute(sa.text(
            "SELECT type, member_id, data FROM outbox ORDER BY id")).all()
    out = []
    for kind, member, data in found:
        parsed = json.loads(data)
        out.append((kind, member, parsed.get("points"), parsed.get("ref")))
    return out


def enrol(engine: sa.Engine, member: str = "m-1", **profile: Any) -> None:
    upsert_member(engine, P, member, {"email": f"{member}@example.com", "name": "Aisyah",
                                      **profile}, MAR1)


def purchase(engine: sa.Engine, event_id: str, amount: str, when: str,
             member: str = "m-1") -> dict[str, Any]:
    return ingest_event(engine, P, {"id": event_id, "type": "purchase", "member": member,
                                    "order_id": event_id, "occurred_at": when,
                                    "amount": amount}, fixed_clock(when))


def test_every_member_visible_change_writes_one_outbox_row_and_rejections_write_none(engine):
    load_programme(engine, SHOP)
    # Given a member enrolled on 1 March (welcome 50, expiring 1 April 10:00)
    enrol(engine)
    # When a RM 120 purchase on 2 March crosses Emas (100) and earns 120 at Ahli
    purchase(engine, "ev-1", "120.00", "2027-03-02T10:00:00+08:00")
    # and the same event is sent again
    assert purchase(engine, "ev-1", "120.00", "2027-03-02T10:00:00+08:00")["status"] == \
        "replayed"
    # and a latte is redeemed (100: the welcome 50, then 50 of the purchase's 120)
    clock = fixed_clock("2027-03-03T10:00:00+08:00")
    voucher = redeem(engine, P, {"member": "m-1", "reward": "latte"}, "k-1", clock)["voucher"]
    # and a redemption larger than the balance is refused
    with pytest.raises(InsufficientPoints):
        redeem(engine, P, {"member": "m-1", "points": 71}, "k-2", clock)
    # and the voucher is used, and an admin takes 5 points back
    use_voucher(engine, P, voucher["code"], "k-3", {}, clock)
    adjust(engine, P, {"member": "m-1", "points": -5, "reason": "goodwill undone"}, "k-4",
           clock)
    # and run-due runs on 20 March (65 points expire on 2 April: notice) twice
    first = run_due(engine, at("2027-03-20T00:00:00+08:00"), P)
    again = run_due(engine, at("2027-03-20T00:00:00+08:00"), P)
    # and on 3 April (the 65 expire)
    run_due(engine, at("2027-04-03T00:00:00+08:00"), P)

    assert (first.expiry_notices, again.expiry_notices) == (1, 0)
    assert rows(engine) == [
        ("points.earned", "m-1", 50, "signup:m-1"),
        ("member.enrolled", "m-1", None, None),
        ("points.earned", "m-1", 120, "ev-1"),
        ("tier.changed", "m-1", None, "ev-1"),
        ("points.redeemed", "m-1", 100, rows(engine)[4][3]),
        ("voucher.issued", "m-1", None, rows(engine)[4][3]),
        ("voucher.used", "m-1", None, None),
        ("points.adjusted", "m-1", -5, "adjust:k-4"),
        ("points.expiring", "m-1", 65, None),
        ("points.expired", "m-1", 65, "run-due:2027-04-03T00:00:00+08:00"),
    ]
    with engine.connect() as conn:
        data = [json.loads(d) for (d,) in conn.execute(sa.text(
            "SELECT data FROM outbox WHERE type IN ('tier.changed', 'voucher.issued', "
            "'points.expiring') ORDER BY id"))]
    assert data[0] == {"program": P, "member": "m-1", "ref": "ev-1", "from": "member",
                       "to": "gold", "to_name": "Emas", "direction": "up"}
    assert data[1]["code"] == voucher["code"] and data[1]["reward_name"] == "Latte percuma"
    assert data[2] == {"program": P, "member": "m-1", "points": 65,
                       "expires_at": "2027-04-02T02:00:00+00:00"}
    assert_journal_ok(engine)



def test_two_changes_whose_plain_keys_would_meet_each_write_their_message(engine):
    load_programme(engine, SHOP)
    # Given members "a:b" and "a", and event ids that join alike with their member ids
    enrol(engine, "a:b")
    enrol(engine, "a")
    # When "a:b" earns 12 by event "c" and "a" earns 30 by event "b:c"
    purchase(engine, "c", "12.00", "2027-03-02T10:00:00+08:00", member="a:b")
    purchase(engine, "b:c", "30.00", "2027-03-02T11:00:00+08:00", member="a")
    # Then each has its own points.earned message
    earned = [row for row in rows(engine) if row[0] == "points.earned"]
    assert earned == [("points.earned", "a:b", 50, "signup:a:b"),
                      ("points.earned", "a", 50, "signup:a"),
                      ("points.earned", "a:b", 12, "c"),
                      ("points.earned", "a", 30, "b:c")]
    assert_journal_ok(engine)

def _due(engine: sa.Engine) -> Any:
    d = tables_outbox.deliveries
    with engine.connect() as conn:
        return conn.execute(sa.select(d.c.status, d.c.attempts, d.c.next_attempt_at,
                                      d.c.last_error).where(d.c.channel == "webhook")).one()


def test_a_webhook_that_fails_then_times_out_is_retried_with_backoff_until_delivered(engine):
    load_programme(engine, SHOP)
    t0 = at("2027-03-01T10:00:00+08:00")
    with webhook_receiver(WebhookReceiver(script=["fail", "stall"])) as receiver, \
            httpx.Client() as client:
        endpoint = deliveries.add_endpoint(engine, P, receiver.url, ["member.enrolled"], t0)
        receiver.secret = endpoint["secret"]
        enrol(engine)
        assert deliveries.dispatch(engine, t0) == 2  # both rows handled, one delivery made

        def send(seconds: int) -> deliveries.DeliveryReport:
            return deliveries.deliver_webhooks(engine, t0 + timedelta(seconds=seconds), client,
                                               timeout=0.5)

        assert (send(0).failed, _due(engine)[:2], _due(engine)[3]) == (1, ("pending", 1),
                                                                       "HTTP 500")
        assert send(29).failed == 0 and len(receiver.received) == 1  # not due yet
        assert send(30).failed == 1 and _due(engine)[3] == "timeout after 0.5 s"
        assert _due(engine)[2] == t0 + timedelta(seconds=90)
        assert send(90).delivered == 1
        assert send(100_000).delivered == 0

    with engine.connect() as conn:
        outbox_id = conn.execute(sa.text(
            "SELECT id FROM outbox WHERE type = 'member.enrolled'")).scalar_one()
    assert [(r.webhook_id, r.verified, r.answered) for r in receiver.received] == [
        (f"msg_{outbox_id}", True, 500), (f"msg_{outbox_id}", True, 200),
        (f"msg_{outbox_id}", True, 200)]
    body = receiver.received[-1].body
    assert body == {"type": "member.enrolled", "timestamp": "2027-03-01T02:00:00+00:00",
                    "data": {"program": P, "member": "m-1",
                             "balances": {"available": 50, "pending": 0, "reserved": 0}}}
    assert all(r.body == body for r in receiver.received)
    assert _due(engine)[:2] == ("delivered", 3)


def test_a_claimed_batch_is_sent_in_parallel_and_each_outcome_keeps_its_own_schedule(engine):
    # Given 8 welcome webhooks due, and a receiver that answers nobody until 4 requests are
    # in flight at once (a 503 if they never are), failing the first 4 it answers
    load_programme(engine, SHOP)
    t0 = at("2027-03-01T10:00:00+08:00")
    receiver = WebhookReceiver(script=["fail"] * 4, together=4)
    with webhook_receiver(receiver), httpx.Client() as client:
        endpoint = deliveries.add_endpoint(engine, P, receiver.url, ["member.enrolled"], t0)
        receiver.secret = endpoint["secret"]
        for m in range(8):
            enrol(engine, f"m-{m}")
        deliveries.dispatch(engine, t0)

        def send(seconds: int) -> tuple[int, int, int, int]:
            report = deliveries.deliver_webhooks(engine, t0 + timedelta(seconds=seconds),
                                                 client, concurrency=4)
            return report.delivered, report.failed, report.dead, report.dropped

        # When a worker sends 4 at a time: 4 fail, 4 are delivered
        assert send(0) == (4, 4, 0, 0)
        with engine.connect() as conn:
            assert conn.execute(sa.text(
                "SELECT status, attempts, last_error, count(*) FROM deliveries WHERE channel = "
                "'webhook' GROUP BY status, attempts, last_error ORDER BY status")).all() == [
                ("delivered", 1, None, 4), ("pending", 1, "HTTP 500", 4)]
            retry_at = {row[0] for row in conn.execute(sa.select(
                tables_outbox.deliveries.c.next_attempt_at).where(
                tables_outbox.deliveries.c.status == "pending",
                tables_outbox.deliveries.c.channel == "webhook"))}
        # Then each failed one waits its 30 s, as it would alone, and goes out again
        assert retry_at == {t0 + timedelta(seconds=30)}
        assert send(29) == (0, 0, 0, 0)
        assert send(30) == (4, 0, 0, 0)
        assert send(100_000) == (0, 0, 0, 0)
    with engine.connect() as conn:
        outbox_ids = conn.execute(sa.text(
            "SELECT id FROM outbox WHERE type = 'member.enrolled' ORDER BY id")).scalars().all()
        assert conn.execute(sa.text(
            "SELECT status, count(*), sum(attempts) FROM deliveries WHERE channel = 'webhook' "
            "GROUP BY status")).all() == [("delivered", 8, 12)]
    assert all(r.verified for r in receiver.received)
    assert sorted(r.answered for r in receiver.received) == [200] * 8 + [500] * 4
    assert sorted(r.webhook_id for r in receiver.received if r.answered == 200) == sorted(
        f"msg_{i}" for i in outbox_ids)


def test_a_receiver_down_for_24_hours_parks_the_delivery_as_dead_until_replayed(engine):
    load_programme(engine, SHOP)
    t0 = at("2027-03-01T10:00:00+08:00")
    with webhook_receiver(WebhookReceiver(default="fail")) as receiver, \
            httpx.Client() as client:
        endpoint = deliveries.add_endpoint(engine, P, receiver.url, ["member.enrolled"], t0)
        receiver.secret = endpoint["secret"]
        enrol(engine)
        deliveries.dispatch(engine, t0)
        moment = t0
        while _due(engine)[0] == "pending":
            deliveries.deliver_webhooks(engine, moment, client)
            moment = _due(engine)[2]
        assert _due(engine)[:2] == ("dead", 19)
        assert len(receiver.received) == 19
        [dead] = deliveries.dead_letters(engine, P)
        assert (dead["type"], dead["member"], dead["attempts"], dead["last_error"]) == (
            "member.enrolled", "m-1", 19, "HTTP 500")
        # Nothing is sent while it is dead
        assert deliveries.deliver_webhooks(engine, moment + timedelta(days=2), client) \
            .delivered == 0
        # When the admin replays it and the receiver is back
        receiver.default = "ok"
        replay_at = t0 + timedelta(days=3)
        assert deliveries.replay(engine, P, None, replay_at, key="r-1") == {"replayed": 1}
        assert deliveries.replay(engine, P, None, replay_at, key="r-1") == {"replayed": 1}
        assert deliveries.replay(engine, P, None, replay_at) == {"replayed": 0}
        assert deliveries.deliver_webhooks(engine, replay_at, client).delivered == 1
    assert [r.answered for r in receiver.received] == [500] * 19 + [200]
    assert deliveries.dead_letters(engine, P) == []
    assert _due(engine)[:2] == ("delivered", 1)


def test_emails_go_out_in_the_members_language_and_a_failing_server_loses_nothing(engine):
    load_programme(engine, SHOP)
    t0 = at("2027-03-01T10:00:00+08:00")
    enrol(engine, "m-ms")  # the programme's language: Malay
    enrol(engine, "m-tw", attributes={"language": "zh-TW"})
    enrol(engine, "m-en", attributes={"language": "en"})
    assert deliveries.dispatch(engine, t0) == 6
    box = MailBox(refuse=1)
    # Nothing listens at first: every email waits for its next attempt
    nobody = SmtpSettings(host="127.0.0.1", port=free_port(), timeout=2)
    first = deliveries.deliver_emails(engine, t0, nobody)
    assert (first.failed, first.delivered) == (3, 0)
    with smtp_server(box) as port:
        settings = SmtpSettings(host="127.0.0.1", port=port, sender="Kedai <kedai@example.com>")
        # The server refuses the first message it gets with 451, accepts the rest
        second = deliveries.deliver_emails(engine, t0 + timedelta(seconds=30), settings)
        third = deliveries.deliver_emails(engine, t0 + timedelta(seconds=90), settings)
        fourth = deliveries.deliver_emails(engine, t0 + timedelta(days=1), settings)
    assert (second.failed, second.delivered, third.delivered, fourth.delivered) == (1, 2, 1, 0)
    by_to = {m["To"]: m for m in box.messages}
    assert len(box.messages) == 3 and len({m["Message-ID"] for m in box.messages}) == 3
    assert by_to["m-ms@example.com"]["Subject"] == "Selamat datang ke Kedai Kopi"
    assert by_to["m-ms@example.com"].get_payload(decode=True).decode() == (  # SMTP: CRLF
        "Helo Aisyah,\r\n\r\nSelamat datang ke Kedai Kopi! Anda mempunyai 50 Mata.\r\n")
    assert by_to["m-tw@example.com"]["Content-Language"] == "zh-Hant"
    assert str(by_to["m-tw@example.com"]["Subject"]) == "歡迎加入Kedai Kopi"
    assert by_to["m-en@example.com"]["Subject"] == "Welcome to Kedai Kopi"
    with engine.connect() as conn:
        assert conn.execute(sa.text(
            "SELECT status, count(*), sum(attempts) FROM deliveries GROUP BY status")).all() \
            == [("delivered", 3, 7)]  # 3 refused connections, one 451, 3 sent


@pytest.mark.postgres
def test_an_expiry_notice_written_while_its_member_is_erased_names_her_pseudonym(pg_engine):
    # Given a member whose welcome points expire within 30 days of 20 March, and an
    # erasure of her that has locked her row and not yet committed (another connection)
    engine = pg_engine
    load_programme(engine, SHOP)
    enrol(engine)
    outbox_rows_before = len(rows(engine))
    eraser = engine.connect()
    eraser.begin()
    pk = eraser.execute(sa.text("SELECT pk FROM members WHERE id = 'm-1' FOR UPDATE")
                        ).scalar_one()

    # When run-due's expiry notices run meanwhile (they read her id before her row is
    # locked for the notice), and the erasure renames her and commits
    with ThreadPoolExecutor(1) as pool:
        notices = pool.submit(outbox.expiring_soon, engine,
                              programme_of(engine), at("2027-03-20T00:00:00+08:00"))
        # until the notice waits for her row's lock
        waiting = wait_for_lock_waiters(engine, statement_like="%FOR SHARE%",
                                        seconds=10)
        assert waiting == 1
        eraser.execute(sa.text("UPDATE members SET id = 'erased-0000000000000000', "
                               "email = NULL WHERE pk = :pk"), {"pk": pk})
        eraser.commit()
        eraser.close()
        written = notices.result(timeout=30)

    # Then the notice names her pseudonym, which has no address: no email goes for it (it
    # used to name "m-1", whose next enrolment would have been emailed it)
    assert written == 1
    assert rows(engine)[outbox_rows_before:] == [
        ("points.expiring", "erased-0000000000000000", 50, None)]
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT key FROM outbox WHERE type = 'points.expiring'")
                            ).scalar_one() == f"points.expiring:#{pk}:2027-04-01T02:00:00+00:00"
    assert_journal_ok(engine)


def programme_of(engine: sa.Engine) -> Any:
    from setia.adapters.db.store import UnitOfWork
    with UnitOfWork(engine) as uow:
        return uow.programme(P)
