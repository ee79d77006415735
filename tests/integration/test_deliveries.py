"""Delivering the outbox when things go wrong on the sender's side: an endpoint URL no send
can use, a batch that outlasts its lease, a receiver that answers a byte at a time. Real
receivers (tests/receivers.py); time is moved by the clock the functions are given."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from setia.adapters import webhooks
from setia.adapters.db import tables_outbox
from setia.adapters.mail import SmtpSettings
from setia.domain.errors import InvalidField
from setia.entrypoints.worker import Worker
from setia.service import deliveries
from tests.conftest import assert_journal_ok, at, load_programme
from tests.integration.test_outbox import SHOP, P, enrol
from tests.receivers import MailBox, WebhookReceiver, smtp_server, webhook_receiver

T0 = at("2027-03-01T10:00:00+08:00")
d = tables_outbox.deliveries


class Clock:
    """The worker's clock, moved by the test (and by receivers, as if a send took long)."""

    def __init__(self, start: datetime) -> None:
        self.now = start
        self.lock = threading.Lock()

    def __call__(self) -> datetime:
        with self.lock:
            return self.now

    def advance(self, by: timedelta) -> datetime:
        with self.lock:
            self.now += by
            return self.now


def states(engine: sa.Engine, channel: str) -> list[tuple[Any, ...]]:
    """(target, status, attempts, next attempt, last error) of a channel's deliveries."""
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(
            sa.select(d.c.target, d.c.status, d.c.attempts, d.c.next_attempt_at,
                      d.c.last_error).where(d.c.channel == channel).order_by(d.c.id))]


def endpoint_rows(engine: sa.Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(sa.text(
            "SELECT id, url FROM webhook_endpoints ORDER BY id"))]


# -- an endpoint URL no send can use ----------------------------------------------------------

@pytest.mark.parametrize("url", ["https://host:port/hook", "http://", "https://:443/hook",
                                 "http://[::1/hook", "http://127.0.0.1:99999/hook",
                                 "https://shop.example/ hook"])
def test_an_endpoint_url_no_send_could_use_is_refused_naming_the_field(engine, url):
    load_programme(engine, SHOP)
    deliveries.add_endpoint(engine, P, "https://shop.example/hooks", None, T0)
    before = endpoint_rows(engine)
    with pytest.raises(InvalidField) as refused:
        deliveries.add_endpoint(engine, P, url, None, T0)
    problem = refused.value.to_problem()
    assert (problem["type"], problem["status"], problem["field"]) == (
        "https://setia.dev/problems/invalid-field", 422, "url")
    assert problem["detail"].startswith("url ")
    assert endpoint_rows(engine) == before  # nothing stored


def test_an_endpoint_stored_malformed_fails_its_own_attempts_and_the_pass_goes_on(engine):
    # Given a good endpoint, and one whose URL an older version stored malformed (httpx
    # refuses to parse it), two welcome messages, and members with an address
    load_programme(engine, SHOP)
    box = MailBox()
    with webhook_receiver(WebhookReceiver()) as receiver, smtp_server(box) as port:
        good = deliveries.add_endpoint(engine, P, receiver.url, ["member.enrolled"], T0)
        receiver.secret = good["secret"]
        bad = deliveries.add_endpoint(engine, P, receiver.url, ["member.enrolled"], T0)
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE webhook_endpoints SET url = :url WHERE id = :id"),
                         {"url": "https://host:port/hook", "id": bad["id"]})
        enrol(engine, "m-1")
        enrol(engine, "m-2")
        clock = Clock(T0)
        worker = Worker(engine, smtp=SmtpSettings(host="127.0.0.1", port=port),
                        run_due_seconds=0, webhook_concurrency=2, clock=clock)
        try:
            # When the worker makes a pass
            first = worker.deliver()
            # Then the malformed endpoint's two deliveries are failed attempts with their
            # error and their retry, and everything else went out in the same pass
            assert (first.delivered, first.failed, first.dead, first.released) == (4, 2, 0, 0)
            error = "InvalidURL: Invalid port: 'port'"
            retry = T0 + timedelta(seconds=30)
            assert [s for s in states(engine, "webhook") if s[0] == bad["id"]] == [
                (bad["id"], "pending", 1, retry, error)] * 2
            assert [s[1:3] for s in states(engine, "webhook") if s[0] == good["id"]] == [
                ("delivered", 1)] * 2
            assert [s[1:3] for s in states(engine, "email")] == [("delivered", 1)] * 2
            assert sorted(m["To"] for m in box.messages) == ["m-1@example.com",
                                                             "m-2@example.com"]
            assert [(r.verified, r.answered) for r in receiver.received] == [(True, 200)] * 2
            # And at the retry they fail again, on the schedule, not once a lease ends
            clock.advance(timedelta(seconds=30))
            second = worker.deliver()
            assert (second.delivered, second.failed) == (0, 2)
            assert [s for s in states(engine, "webhook") if s[0] == bad["id"]] == [
                (bad["id"], "pending", 2, T0 + timedelta(seconds=90), error)] * 2
        finally:
            worker.close()
    assert len(receiver.received) == 2 and len(box.messages) == 2
    assert_journal_ok(engine)


# -- a batch that outlasts its lease ----------------------------------------------------------

class SlowRelay(MailBox):
    """An SMTP server that takes ``each`` of the test's clock per message and, once the
    first worker's lease has run out, lets ``second_worker`` make its pass before it
    answers (the first worker is still waiting for that answer)."""

    def __init__(self, clock: Clock, each: timedelta, lease_ends: datetime,
                 second_worker: Callable[[], None]) -> None:
        super().__init__()
        self.clock, self.each, self.lease_ends = clock, each, lease_ends
        self.second_worker = second_worker

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        if self.clock.advance(self.each) > self.lease_ends:
            await asyncio.get_running_loop().run_in_executor(None, self.second_worker)
        return await super().handle_DATA(server, session, envelope)


def test_emails_whose_lease_runs_out_part_way_are_not_sent_late_but_once_by_the_next_claim(
        engine):
    # Given 4 welcome emails, a relay that takes 3 minutes per message, and a second worker
    # that makes a pass as soon as the first worker's 10-minute lease has run out
    load_programme(engine, SHOP)
    for m in range(4):
        enrol(engine, f"m-{m}")
    deliveries.dispatch(engine, T0)
    clock = Clock(T0)
    second: list[deliveries.DeliveryReport] = []
    started = threading.Event()
    settings = SmtpSettings(host="127.0.0.1", port=0)

    def second_worker() -> None:  # one pass, the first time it is asked
        if not started.is_set():
            started.set()
            second.append(deliveries.deliver_emails(engine, clock(), settings, clock=clock))

    box = SlowRelay(clock, timedelta(minutes=3), T0 + deliveries.LEASE, second_worker)
    with smtp_server(box) as port:
        settings = SmtpSettings(host="127.0.0.1", port=port)
        # When the first worker sends its batch, claimed at 10:00
        first = deliveries.deliver_emails(engine, T0, settings, clock=clock)
        sent_by_first = clock()
        second_worker()  # the lease has run out (if it had not started already)
    # Then each message reached the relay exactly once
    assert sorted(Counter(m["Message-ID"] for m in box.messages).values()) == [1, 1, 1, 1]
    assert sorted(m["To"] for m in box.messages) == [f"m-{m}@example.com" for m in range(4)]
    # The first worker sent 3 (10:00, 10:03, 10:06) and, at 10:09 with less than 2 minutes
    # of its lease left to send in, released the fourth unsent; the second one sent it
    assert (first.delivered, first.released, sent_by_first) == (
        3, 1, T0 + timedelta(minutes=9))
    assert (second[0].delivered, second[0].released) == (1, 0)
    # None counted an attempt it did not make
    assert [s[1:3] for s in states(engine, "email")] == [("delivered", 1)] * 4
    assert_journal_ok(engine)


def test_webhooks_whose_lease_runs_out_part_way_are_not_sent_late_but_once_by_the_next_claim(
        engine):
    # Given 4 welcome webhooks, a first worker whose sends each take 3 minutes, and a
    # second worker that makes a pass as soon as the first one's lease has run out
    load_programme(engine, SHOP)
    clock = Clock(T0)
    second: list[deliveries.DeliveryReport] = []
    started = threading.Event()
    lease_ends = T0 + deliveries.LEASE
    with webhook_receiver(WebhookReceiver()) as receiver, \
            webhooks.client(5) as fast, webhooks.client(5) as slow:
        receiver.secret = deliveries.add_endpoint(engine, P, receiver.url,
                                                  ["member.enrolled"], T0)["secret"]
        for m in range(4):
            enrol(engine, f"m-{m}")
        deliveries.dispatch(engine, T0)

        def second_worker() -> None:  # one pass, the first time it is asked
            if not started.is_set():
                started.set()
                second.append(deliveries.deliver_webhooks(engine, clock(), fast, timeout=5,
                                                          clock=clock))

        def took_three_minutes(response: httpx.Response) -> None:
            if clock.advance(timedelta(minutes=3)) > lease_ends:
                second_worker()  # before the first worker records this send

        slow.event_hooks = {"request": [], "response": [took_three_minutes]}
        # When the first worker sends its batch one at a time, claimed at 10:00
        first = deliveries.deliver_webhooks(engine, T0, slow, timeout=5, concurrency=1,
                                            clock=clock)
        second_worker()  # the lease has run out (if it had not started already)
    # Then each message reached the receiver exactly once: the first worker sent 3 and,
    # at 10:09 with less than 2 min 5 s of its lease left, released the fourth unsent,
    # which the second one sent
    assert sorted(Counter(receiver.ids()).values()) == [1, 1, 1, 1]
    assert (first.delivered, first.released) == (3, 1)
    assert (second[0].delivered, second[0].released) == (1, 0)
    assert all(r.verified and r.answered == 200 for r in receiver.received)
    assert [s[1:3] for s in states(engine, "webhook")] == [("delivered", 1)] * 4
    assert_journal_ok(engine)


def test_emails_claimed_after_slow_webhooks_get_a_whole_lease(engine):
    # Given a worker pass whose webhooks take 9 minutes, then 2 emails to send
    load_programme(engine, SHOP)
    clock = Clock(T0)
    box = MailBox()
    with webhook_receiver(WebhookReceiver()) as receiver, smtp_server(box) as port:
        receiver.secret = deliveries.add_endpoint(engine, P, receiver.url,
                                                  ["member.enrolled"], T0)["secret"]
        enrol(engine, "m-1")
        enrol(engine, "m-2")
        worker = Worker(engine, smtp=SmtpSettings(host="127.0.0.1", port=port),
                        run_due_seconds=0, webhook_concurrency=1, clock=clock)
        worker.client.event_hooks = {"request": [], "response": [
            lambda response: clock.advance(timedelta(minutes=4, seconds=30))]}
        try:
            # When it makes its pass
            report = worker.deliver()
        finally:
            worker.close()
    # Then the emails were claimed at 10:09, not at the pass's 10:00, and all went out in
    # the first round, none released for want of lease
    assert (report.delivered, report.released) == (4, 0)
    assert len(box.messages) == 2 and len(receiver.received) == 2
    assert [s[1:3] for s in states(engine, "email")] == [("delivered", 1)] * 2


# -- a receiver that answers a byte at a time -------------------------------------------------

def test_a_receiver_that_trickles_its_answer_is_cut_off_at_the_timeout(engine):
    # Given a receiver that writes its 200 one byte every 0.1 s: no read waits 0.5 s, but
    # the whole answer takes about 4 s
    load_programme(engine, SHOP)
    receiver = WebhookReceiver(script=["trickle"])
    with webhook_receiver(receiver), webhooks.client(0.5) as client:
        receiver.secret = deliveries.add_endpoint(engine, P, receiver.url,
                                                  ["member.enrolled"], T0)["secret"]
        enrol(engine)
        deliveries.dispatch(engine, T0)
        # When a worker sends it with a 0.5 s timeout
        report = deliveries.deliver_webhooks(engine, T0, client, timeout=0.5)
        # Then the send was cut off at its deadline, a failed attempt to retry: had the
        # sender waited for the whole answer (a 200, no read waiting 0.5 s), it would have
        # been delivered
        assert (report.delivered, report.failed) == (0, 1)
        assert states(engine, "webhook")[0][1:] == (
            "pending", 1, T0 + timedelta(seconds=30), "timeout after 0.5 s")
        # And the retry, answered at once, is delivered
        assert deliveries.deliver_webhooks(engine, T0 + timedelta(seconds=30), client,
                                           timeout=0.5).delivered == 1
        # and the receiver saw the first sender hang up before the answer's last byte
        assert receiver.trickles_ended(1) == (1, 1)
    assert len(receiver.received) == 2
    assert_journal_ok(engine)


PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture(autouse=True)
def no_proxy_from_the_machine(monkeypatch):
    """Receivers on loopback are reached directly, whatever proxies this machine names;
    a test that wants a proxy names its own."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def test_webhooks_go_through_the_proxy_the_environment_names(monkeypatch):
    # Given a proxy named by HTTP_PROXY (the receiver, which answers what it is sent,
    # trickling its answer) and a receiver's host no one can look up, as one reached only
    # through that proxy
    receiver = WebhookReceiver(secret=webhooks.new_secret(), script=["ok", "trickle"])
    with webhook_receiver(receiver):
        monkeypatch.setenv("HTTP_PROXY", receiver.url)

        def send(timeout: float) -> webhooks.Outcome:
            return webhooks.send(client, "http://hooks.setia.invalid/in", receiver.secret,
                                 "msg_1", datetime.now(UTC), '{"type": "member.enrolled"}',
                                 timeout=timeout)

        # When a webhook is sent with the worker's client, then one whose answer trickles
        with webhooks.client(5.0) as client:
            delivered = send(5.0)
            cut = send(0.5)
        hung_up = receiver.trickles_ended(1)
    # Then the first went through the proxy, signed, and was delivered; the second was cut
    # off at its deadline there too (its whole answer, a 200, would have delivered it)
    assert delivered == webhooks.Outcome(True)
    assert cut == webhooks.Outcome(False, "timeout after 0.5 s")
    assert hung_up == (1, 1)  # the sender hung up before the answer's last byte
    assert [(r.webhook_id, r.body, r.verified) for r in receiver.received] == [
        ("msg_1", {"type": "member.enrolled"}, True)] * 2


def test_a_proxy_the_client_cannot_use_leaves_the_worker_sending_directly(monkeypatch, caplog):
    # Given a SOCKS proxy named by the environment (httpx needs an extra package for it)
    monkeypatch.setenv("ALL_PROXY", "socks5://127.0.0.1:1080")
    receiver = WebhookReceiver(secret=webhooks.new_secret())
    # When the worker's client is made and a webhook sent to a receiver on loopback
    with webhook_receiver(receiver), webhooks.client(5.0) as client:
        outcome = webhooks.send(client, f"{receiver.url}/in", receiver.secret, "msg_1",
                                datetime.now(UTC), '{"type": "member.enrolled"}', timeout=5.0)
    # Then the client was made (the worker, which runs run-due too, starts), told why it
    # uses no proxy, and sent directly
    assert outcome == webhooks.Outcome(True)
    assert [r.message for r in caplog.records if r.name == "setia.adapters.webhooks"] == [
        "webhook proxy from the environment not used: Using SOCKS proxy, but the 'socksio' "
        "package is not installed. Make sure to install httpx using `pip install "
        "httpx[socks]`."]
    assert len(receiver.received) == 1


# -- an endpoint removed ---------------------------------------------------------------------

def test_a_removed_endpoint_gets_nothing_more_and_the_others_go_on(engine):
    # Given two endpoints (a retried registration made a second one), and a welcome queued
    # for both before the second is removed
    from setia.domain.errors import UnknownWebhook

    load_programme(engine, SHOP)
    with webhook_receiver(WebhookReceiver()) as kept, \
            webhook_receiver(WebhookReceiver()) as gone, webhooks.client(5) as client:
        kept.secret = deliveries.add_endpoint(engine, P, kept.url, None, T0)["secret"]
        second = deliveries.add_endpoint(engine, P, gone.url, None, T0)
        gone.secret = second["secret"]
        enrol(engine, "m-1")
        deliveries.dispatch(engine, T0)
        # When the second is removed, and later members enrol
        deliveries.remove_endpoint(engine, P, second["id"], T0)
        enrol(engine, "m-2")
        deliveries.dispatch(engine, T0)
        report = deliveries.deliver_webhooks(engine, T0, client, timeout=5)
        # Then only the first endpoint is listed, and only it received anything: each
        # member's two messages (enrolled, and the welcome points earned); the two queued
        # for the removed endpoint before it was removed were dropped, not sent
        listed = deliveries.list_endpoints(engine, P)
        assert [e["url"] for e in listed] == [kept.url]
        assert len(kept.ids()) == 4 and all(r.verified for r in kept.received)
        assert gone.ids() == []
        assert (report.delivered, report.dropped) == (4, 2)
        # and removing it again, or an endpoint of no one, is refused by name
        for endpoint in (second["id"], "we_0000000000000000"):
            with pytest.raises(UnknownWebhook) as refused:
                deliveries.remove_endpoint(engine, P, endpoint, T0)
            assert refused.value.to_problem()["status"] == 404
            assert refused.value.field == "webhook"
    with engine.connect() as conn:
        audited = conn.execute(sa.text(
            "SELECT target FROM audit_log WHERE action = 'webhook.remove'")).scalars().all()
    assert audited == [f"webhook {second['id']}"]
    assert_journal_ok(engine)
