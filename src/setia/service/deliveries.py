"""Delivering the outbox: webhooks (signed, Standard Webhooks) and emails (SMTP).

Three steps, each safe with several workers at once (rows claimed with
FOR UPDATE SKIP LOCKED on PostgreSQL; SQLite runs one writer at a time):

1. ``dispatch``: each new outbox row becomes one delivery per active webhook endpoint of
   its programme, and one email if its type sends one and the member has an address.
2. ``claim``: due deliveries get a lease (a worker sends them until it ends) and one
   more attempt, in a short transaction; nothing is held open while sending. A claimed
   batch of webhooks is sent a few at a time in parallel (``WEBHOOK_CONCURRENCY``).
   No send starts once too little of its lease is left (``LEASE_MARGIN``): the delivery
   is ``release``d, unsent and its attempt not counted, for the next claim; otherwise
   another worker could claim it when the lease ends and send it too.
3. ``finish``: delivered, or the next attempt (exponential backoff) or, once the 24-hour
   window is over, dead. An admin can ``replay`` dead ones.

A worker that dies between sending and ``finish`` leaves the lease to run out: the
delivery is sent again with the same webhook-id / Message-ID (at least once; receivers
deduplicate by that id, as the Standard Webhooks specification asks).
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from setia.adapters import mail, webhooks
from setia.adapters.db import tables as t
from setia.adapters.db.store import UnitOfWork
from setia.adapters.db.tables_outbox import deliveries, outbox, webhook_endpoints
from setia.domain import notifications as n
from setia.domain.errors import InvalidField, UnknownProgramme, UnknownWebhook
from setia.service import audit
from setia.service.common import (
    idempotent,
    iso,
    require_programme,
    require_programme_id,
    transaction,
)

DISPATCH_BATCH = 500
CLAIM_BATCH = 20  # at least; a worker claims 4 x its webhook concurrency of webhooks
WEBHOOK_CONCURRENCY = 8  # webhook sends in flight at once per worker (default)
MAX_WEBHOOK_CONCURRENCY = 64
LEASE = timedelta(minutes=10)  # longer than a claimed batch takes at the webhook timeout
# A send starts only while more than this is left of its lease (webhooks: this plus their
# timeout, which bounds one whole send): it is over, and recorded, before the lease ends.
# An email's SMTP exchange is a handful of commands at 10 s each.
LEASE_MARGIN = timedelta(minutes=2)
MAX_WEBHOOK_TIMEOUT_SECONDS = 120.0  # so that a send can start in a fresh lease
MAX_ENDPOINTS = 20
WEBHOOK = "webhook"
EMAIL = "email"


@dataclass
class DeliveryReport:
    dispatched: int = 0
    delivered: int = 0
    failed: int = 0
    dead: int = 0
    dropped: int = 0
    released: int = 0  # claimed, but too little of the lease was left to send: unsent
    errors: list[str] = field(default_factory=list)

    def add(self, other: DeliveryReport) -> None:
        self.dispatched += other.dispatched
        self.delivered += other.delivered
        self.failed += other.failed
        self.dead += other.dead
        self.dropped += other.dropped
        self.released += other.released
        self.errors += other.errors[:10]


def _insert(engine_or_uow: Any) -> Any:
    name = engine_or_uow.dialect if isinstance(engine_or_uow, UnitOfWork) else \
        engine_or_uow.dialect.name
    return postgresql.insert if name == "postgresql" else sqlite.insert


# -- webhook endpoints ----------------------------------------------------------------------

def add_endpoint(engine: sa.Engine, program_id: str, url: Any, types: Any,
                 now: datetime) -> dict[str, Any]:
    """Register a webhook endpoint; answers it with its signing secret (shown once here)."""
    if not isinstance(url, str) or not url.startswith(("http://", "https://")) \
            or len(url) > 2000:
        raise InvalidField("url must be an http:// or https:// URL (at most 2000 characters)",
                           field="url")
    problem = webhooks.url_problem(url)
    if problem is not None:  # a URL no send could use would fail every attempt
        raise InvalidField(f"url {problem}", field="url")
    if types is not None:
        if not isinstance(types, list) or not types or \
                any(kind not in n.MESSAGE_TYPES for kind in types):
            raise InvalidField(f"types must be a non-empty list of {', '.join(n.MESSAGE_TYPES)}",
                               field="types")
        types = sorted(set(types))

    def work(uow: UnitOfWork) -> dict[str, Any]:
        require_programme(uow, program_id)
        count = uow.execute(sa.select(sa.func.count()).select_from(webhook_endpoints).where(
            webhook_endpoints.c.program_id == program_id,
            webhook_endpoints.c.disabled_at.is_(None))).scalar_one()
        if count >= MAX_ENDPOINTS:
            raise InvalidField(f"a programme may have at most {MAX_ENDPOINTS} webhook endpoints",
                               field="url")
        row = {"id": "we_" + secrets.token_hex(8), "program_id": program_id, "url": url,
               "secret": webhooks.new_secret(), "types": types, "created_at": now,
               "disabled_at": None}
        uow.execute(webhook_endpoints.insert().values(**row))
        uow.commit()
        return {"id": row["id"], "url": url, "types": types, "secret": row["secret"],
                "created_at": iso(now)}

    return transaction(engine, work)


def remove_endpoint(engine: sa.Engine, program_id: str, endpoint_id: str,
                    now: datetime) -> None:
    """Stop an endpoint: no delivery is made for it from now on, and those waiting for it
    are dropped when their turn comes (``send_webhooks``). Kept, disabled, for the
    deliveries that name it; audited."""

    def work(uow: UnitOfWork) -> None:
        require_programme(uow, program_id)
        audit.stop(uow, webhook_endpoints, endpoint_id, program_id, "disabled_at", now,
                   UnknownWebhook(f"no active webhook endpoint {endpoint_id!r}",
                                  field="webhook"),
                   "webhook.remove", f"webhook {endpoint_id}")
        uow.commit()

    transaction(engine, work)


def list_endpoints(engine: sa.Engine, program_id: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        require_programme_id(conn, program_id)
        rows = conn.execute(sa.select(webhook_endpoints).where(
            webhook_endpoints.c.program_id == program_id,
            webhook_endpoints.c.disabled_at.is_(None)).order_by(webhook_endpoints.c.created_at,
                                                                 webhook_endpoints.c.id))
        return [{"id": r.id, "url": r.url, "types": r.types, "created_at": iso(r.created_at)}
                for r in rows]


# -- dispatch --------------------------------------------------------------------------------

def dispatch(engine: sa.Engine, now: datetime, limit: int = DISPATCH_BATCH) -> int:
    """Make the deliveries of up to ``limit`` new outbox rows; how many rows were done."""

    def work(uow: UnitOfWork) -> int:
        rows = uow.execute(
            sa.select(outbox.c.id, outbox.c.program_id, outbox.c.type, outbox.c.member_id)
            .where(outbox.c.dispatched_at.is_(None)).order_by(outbox.c.id).limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
        if not rows:
            return 0
        programs = sorted({row.program_id for row in rows})
        endpoints: dict[str, list[Any]] = {}
        for endpoint in uow.execute(sa.select(webhook_endpoints).where(
                webhook_endpoints.c.program_id.in_(programs),
                webhook_endpoints.c.disabled_at.is_(None))):
            endpoints.setdefault(endpoint.program_id, []).append(endpoint)
        emailed = {(row.program_id, row.member_id) for row in rows if row.type in n.EMAIL_TYPES}
        with_address: set[tuple[str, str]] = set()
        for program_id in programs:
            wanted = sorted(m for p, m in emailed if p == program_id)
            for start in range(0, len(wanted), 500):
                with_address.update((program_id, member_id) for member_id in uow.execute(
                    sa.select(t.members.c.id).where(
                        t.members.c.program_id == program_id,
                        t.members.c.id.in_(wanted[start:start + 500]),
                        t.members.c.email.is_not(None))).scalars())
        made: list[dict[str, Any]] = []
        base = {"status": "pending", "attempts": 0, "next_attempt_at": now, "lease_until": None,
                "window_started_at": now, "last_error": None, "delivered_at": None,
                "created_at": now}
        for row in rows:
            for endpoint in endpoints.get(row.program_id, []):
                if endpoint.types is None or row.type in endpoint.types:
                    made.append({**base, "outbox_id": row.id, "program_id": row.program_id,
                                 "channel": WEBHOOK, "target": endpoint.id})
            if row.type in n.EMAIL_TYPES and (row.program_id, row.member_id) in with_address:
                made.append({**base, "outbox_id": row.id, "program_id": row.program_id,
                             "channel": EMAIL, "target": "member"})
        if made:
            insert = _insert(uow)(deliveries)
            uow.execute(insert.on_conflict_do_nothing(
                index_elements=["outbox_id", "channel", "target"]), made)
        uow.execute(outbox.update().where(outbox.c.id.in_([row.id for row in rows]))
                    .values(dispatched_at=now))
        uow.commit()
        return len(rows)

    return transaction(engine, work)


# -- claim, send, finish ---------------------------------------------------------------------

def claim(engine: sa.Engine, channel: str, now: datetime,
          limit: int = CLAIM_BATCH) -> list[dict[str, Any]]:
    """Lease up to ``limit`` due deliveries of ``channel`` (one more attempt each)."""
    d = deliveries

    def work(uow: UnitOfWork) -> list[dict[str, Any]]:
        ids = list(uow.execute(
            sa.select(d.c.id).where(
                d.c.status == "pending", d.c.channel == channel, d.c.next_attempt_at <= now,
                sa.or_(d.c.lease_until.is_(None), d.c.lease_until < now))
            .order_by(d.c.next_attempt_at, d.c.id).limit(limit)
            .with_for_update(skip_locked=True)).scalars())
        if not ids:
            return []
        uow.execute(d.update().where(d.c.id.in_(ids))
                    .values(lease_until=now + LEASE, attempts=d.c.attempts + 1))
        rows = uow.execute(
            sa.select(d, outbox.c.type, outbox.c.data, outbox.c.member_id,
                      outbox.c.occurred_at.label("message_occurred_at"))
            .join(outbox, outbox.c.id == d.c.outbox_id).where(d.c.id.in_(ids))
            .order_by(d.c.id)).mappings().all()
        uow.commit()
        return [dict(row) for row in rows]

    return transaction(engine, work)


def finish(engine: sa.Engine, delivery: dict[str, Any], error: str | None,
           now: datetime, *, drop: bool = False) -> str:
    """Record one attempt's outcome; answers the delivery's new status."""
    d = deliveries
    if drop:
        values: dict[str, Any] = {"status": "dropped", "lease_until": None, "last_error": error}
    elif error is None:
        values = {"status": "delivered", "delivered_at": now, "lease_until": None,
                  "last_error": None}
    else:
        retry_at = n.next_attempt(delivery["attempts"], now, delivery["window_started_at"])
        values = {"lease_until": None, "last_error": error[:500]}
        if retry_at is None:
            values["status"] = "dead"
        else:
            values["status"] = "pending"
            values["next_attempt_at"] = retry_at

    def work(uow: UnitOfWork) -> None:
        uow.execute(d.update().where(d.c.id == delivery["id"], d.c.status == "pending",
                                     d.c.attempts == delivery["attempts"]).values(**values))
        uow.commit()

    transaction(engine, work)
    return str(values["status"])


def release(engine: sa.Engine, delivery: dict[str, Any]) -> bool:
    """Give back a claimed delivery that was not sent: its lease ends now and its attempt
    is not counted, so the next claim takes it at once. Nothing happens if its lease has
    already gone to another worker (the same condition as ``finish``)."""
    d = deliveries

    def work(uow: UnitOfWork) -> bool:
        count = uow.execute(d.update().where(
            d.c.id == delivery["id"], d.c.status == "pending",
            d.c.attempts == delivery["attempts"]).values(lease_until=None,
                                                        attempts=d.c.attempts - 1)).rowcount
        uow.commit()
        return bool(count)

    return transaction(engine, work)


def time_to_send(delivery: dict[str, Any], moment: datetime, margin: timedelta) -> bool:
    """Whether a send started at ``moment`` is done, ``margin`` being its longest, before
    the delivery's lease ends (after that another worker may claim and send it too)."""
    return bool(moment < delivery["lease_until"] - margin)


def _unexpected(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


def webhook_body(delivery: dict[str, Any]) -> str:
    """The JSON a receiver gets: the same on every attempt, but that an erasure between
    two attempts relabels the member it names (docs/privacy.md)."""
    return json.dumps({"type": delivery["type"],
                       "timestamp": delivery["message_occurred_at"].isoformat(),
                       "data": json.loads(delivery["data"])}, sort_keys=True)


def message_id(delivery: dict[str, Any]) -> str:
    return f"msg_{delivery['outbox_id']}"


def deliver_webhooks(engine: sa.Engine, now: datetime, client: httpx.Client, *,
                     timeout: float = webhooks.TIMEOUT_SECONDS,
                     concurrency: int = WEBHOOK_CONCURRENCY,
                     clock: Callable[[], datetime] | None = None,
                     wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                     on_attempt: Callable[[str, str], None] | None = None) -> DeliveryReport:
    """Send one batch of due webhooks, claimed at ``now``, up to ``concurrency`` at once
    (threads sharing ``client``'s connection pool; ``webhooks.client`` holds each send to
    ``timeout`` seconds in all); each sender records its outcome in its own short
    transaction as soon as it has it, as a single sender would.

    ``clock`` (the worker's; time stands still at ``now`` when not given) is read before
    each send, which is released unsent when too little of its lease is left, and for
    each outcome's time. The signature's timestamp is the wall clock at the moment of
    sending, which receivers compare with theirs. One send's unexpected error is that
    attempt's failure, never the batch's."""
    assert 1 <= concurrency <= MAX_WEBHOOK_CONCURRENCY, concurrency
    assert 0 < timeout <= MAX_WEBHOOK_TIMEOUT_SECONDS, timeout
    time_now = clock or (lambda: now)
    margin = LEASE_MARGIN + timedelta(seconds=timeout)
    report = DeliveryReport()
    claimed = claim(engine, WEBHOOK, now, limit=max(CLAIM_BATCH, 4 * concurrency))
    if not claimed:
        return report
    with engine.connect() as conn:
        endpoints = {row.id: row for row in conn.execute(sa.select(webhook_endpoints).where(
            webhook_endpoints.c.id.in_(sorted({d["target"] for d in claimed}))))}
    sendable: list[tuple[dict[str, Any], Any]] = []
    for delivery in claimed:
        endpoint = endpoints.get(delivery["target"])
        if endpoint is None or endpoint.disabled_at is not None:
            finish(engine, delivery, "endpoint disabled", time_now(), drop=True)
            report.dropped += 1
        else:
            sendable.append((delivery, endpoint))

    counting = threading.Lock()

    def deliver(delivery: dict[str, Any], endpoint: Any) -> None:
        if not time_to_send(delivery, time_now(), margin):
            release(engine, delivery)
            with counting:
                report.released += 1
            return
        try:
            outcome = webhooks.send(client, endpoint.url, endpoint.secret,
                                    message_id(delivery), wall_clock(), webhook_body(delivery),
                                    timeout)
        except Exception as exc:  # noqa: BLE001 - this attempt failed; the batch goes on
            outcome = webhooks.Outcome(False, _unexpected(exc))
        status = finish(engine, delivery, outcome.error, time_now())
        with counting:
            _count(report, status, outcome.error)
        if on_attempt:
            on_attempt(WEBHOOK, "ok" if outcome.ok else "failed")

    if concurrency == 1 or len(sendable) <= 1:
        for delivery, endpoint in sendable:
            deliver(delivery, endpoint)
        return report
    crashed: list[BaseException] = []
    with ThreadPoolExecutor(max_workers=min(concurrency, len(sendable)),
                            thread_name_prefix="setia-webhook") as pool:
        for future in [pool.submit(deliver, delivery, endpoint)
                       for delivery, endpoint in sendable]:
            try:
                future.result()
            except Exception as exc:  # noqa: BLE001 - re-raised once the others are done
                crashed.append(exc)  # (recording failed: the database) its lease runs out
    if crashed:
        raise crashed[0]
    return report


def _count(report: DeliveryReport, status: str, error: str | None) -> None:
    if status == "delivered":
        report.delivered += 1
    elif status == "dead":
        report.dead += 1
    else:
        report.failed += 1
    if error:
        report.errors.append(error)


def deliver_emails(engine: sa.Engine, now: datetime, settings: mail.SmtpSettings,
                   on_attempt: Callable[[str, str], None] | None = None, *,
                   clock: Callable[[], datetime] | None = None) -> DeliveryReport:
    """Send one batch of due emails, claimed at ``now``, one by one, each in its member's
    language. ``clock`` as for ``deliver_webhooks``: an email whose lease is about to end
    is released unsent for the next claim, not sent late (a slow server could otherwise
    keep the batch going past the lease, and another worker would send the rest too)."""
    time_now = clock or (lambda: now)
    report = DeliveryReport()
    for delivery in claim(engine, EMAIL, now):
        if not time_to_send(delivery, time_now(), LEASE_MARGIN):
            release(engine, delivery)
            report.released += 1
            continue
        drop, error = False, None
        try:
            built = _email(engine, delivery)
            if built is None:
                drop, error = True, "no email address or nothing to say"
            else:
                error = mail.send(settings, built(settings))
        except Exception as exc:  # noqa: BLE001 - this attempt failed; the batch goes on
            error = _unexpected(exc)
        if drop:
            finish(engine, delivery, error, time_now(), drop=True)
            report.dropped += 1
            continue
        _count(report, finish(engine, delivery, error, time_now()), error)
        if on_attempt:
            on_attempt(EMAIL, "ok" if error is None else "failed")
    return report


def _email(engine: sa.Engine, delivery: dict[str, Any]) -> Any:
    """A builder of the delivery's email, or None if there is none to send. The message
    and its member are read now, not when the delivery was claimed: an erasure since
    relabelled the message to a pseudonym, which has no address, even where the same id
    has enrolled again meanwhile."""
    m = t.members
    with UnitOfWork(engine) as uow:
        programme = uow.programme(delivery["program_id"])
        member = uow.execute(sa.select(outbox.c.type, outbox.c.data, m.c.email, m.c.name,
                                       m.c.attributes)
                             .join(m, sa.and_(m.c.program_id == outbox.c.program_id,
                                              m.c.id == outbox.c.member_id))
                             .where(outbox.c.id == delivery["outbox_id"])).one_or_none()
    if programme is None or member is None or not member.email:
        return None
    attributes = member.attributes or {}
    language = n.language_for([attributes.get("language"), attributes.get("locale"),
                               programme.model.locale])
    email = n.render_email(member.type, json.loads(member.data), language=language,
                           name=member.name, programme_name=programme.model.name,
                           points_name=programme.model.points.name, timezone=programme.tz)
    if email is None:
        return None
    domain = delivery["program_id"] + ".setia.invalid"
    return lambda settings: mail.build(settings, member.email, email.subject, email.text,
                                       f"<delivery-{delivery['id']}@{domain}>", email.language)


# -- dead letters ---------------------------------------------------------------------------

def dead_letters(engine: sa.Engine, program_id: str, limit: int = 500) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        require_programme_id(conn, program_id)
        rows = conn.execute(
            sa.select(deliveries, outbox.c.type, outbox.c.member_id)
            .join(outbox, outbox.c.id == deliveries.c.outbox_id)
            .where(deliveries.c.program_id == program_id, deliveries.c.status == "dead")
            .order_by(deliveries.c.id).limit(limit)).mappings().all()
    return [{"id": row["id"], "message": f"msg_{row['outbox_id']}", "type": row["type"],
             "member": row["member_id"], "channel": row["channel"], "target": row["target"],
             "attempts": row["attempts"], "last_error": row["last_error"],
             "first_attempt_window_started_at": iso(row["window_started_at"])}
            for row in rows]


def replay(engine: sa.Engine, program_id: str, ids: Any, now: datetime,
           key: str | None = None) -> dict[str, int]:
    """Put dead deliveries (these ``ids``, or all of the programme's if None) back in the
    queue, due now with a fresh 24-hour window; answers how many. With ``key`` (the API's
    Idempotency-Key) a repeat answers the first result."""
    if ids is not None and (not isinstance(ids, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in ids) or len(ids) > 1000):
        raise InvalidField("ids must be a list of at most 1000 delivery ids", field="ids")

    def work(uow: UnitOfWork) -> dict[str, int]:
        if uow.programme(program_id) is None:
            raise UnknownProgramme(f"no programme {program_id!r}", field="program")

        def run() -> dict[str, int]:
            where = [deliveries.c.program_id == program_id, deliveries.c.status == "dead"]
            if ids is not None:
                where.append(deliveries.c.id.in_(ids))
            count = uow.execute(deliveries.update().where(*where).values(
                status="pending", attempts=0, next_attempt_at=now, window_started_at=now,
                lease_until=None)).rowcount
            return {"replayed": int(count or 0)}

        result = run() if key is None else idempotent(
            uow, program_id, key, "replay-dead-letters", {"ids": ids}, run, now)
        uow.commit()
        return result

    return transaction(engine, work)


# -- figures for /metrics -------------------------------------------------------------------

def queue_figures(engine: sa.Engine, now: datetime) -> dict[str, Any]:
    """Outbox lag (age of the oldest row not yet dispatched, and of the oldest due
    delivery), deliveries by channel and status, retries so far."""
    with engine.connect() as conn:
        oldest = conn.execute(sa.select(sa.func.min(outbox.c.created_at))
                              .where(outbox.c.dispatched_at.is_(None))).scalar_one()
        due = conn.execute(sa.select(sa.func.min(deliveries.c.next_attempt_at)).where(
            deliveries.c.status == "pending")).scalar_one()
        retried = sa.case((deliveries.c.attempts > 1, deliveries.c.attempts - 1), else_=0)
        counts = conn.execute(sa.select(deliveries.c.channel, deliveries.c.status,
                                        sa.func.count(), sa.func.sum(retried))
                              .group_by(deliveries.c.channel, deliveries.c.status)).all()
    retries: dict[str, int] = {}
    for channel, _status, _rows, extra in counts:
        retries[channel] = retries.get(channel, 0) + int(extra or 0)
    return {
        "outbox_lag_seconds": max((now - oldest).total_seconds(), 0.0) if oldest else 0.0,
        "delivery_lag_seconds": max((now - due).total_seconds(), 0.0) if due else 0.0,
        "deliveries": {(c, s): int(k) for c, s, k, _ in counts},
        "retries": retries,
    }
