"""``setia worker``: runs due work (run-due) and delivers the outbox (webhooks, email)
until stopped. Start as many as you like, beside any number of API processes: every
step claims its rows with SKIP LOCKED (PostgreSQL), so no posting, expiry, email or
webhook is done twice.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from setia.adapters import mail, webhooks
from setia.adapters.webhooks import TIMEOUT_SECONDS
from setia.entrypoints.observability import DELIVERY_ATTEMPTS
from setia.service import deliveries
from setia.service.run_due import run_due

log = logging.getLogger("setia.worker")
RUN_DUE_SECONDS = 60.0
IDLE_SECONDS = 1.0
MAX_ROUNDS_PER_PASS = 100  # a bound on one pass; the next pass goes on


def _count(channel: str, outcome: str) -> None:
    DELIVERY_ATTEMPTS.labels(channel, outcome).inc()


class Worker:
    def __init__(self, engine: sa.Engine, *, smtp: mail.SmtpSettings | None = None,
                 run_due_seconds: float = RUN_DUE_SECONDS,
                 webhook_timeout: float = TIMEOUT_SECONDS,
                 webhook_concurrency: int = deliveries.WEBHOOK_CONCURRENCY,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.engine = engine
        self.smtp = smtp
        self.run_due_seconds = run_due_seconds
        self.webhook_timeout = webhook_timeout
        self.webhook_concurrency = webhook_concurrency
        self.clock = clock
        if not 0 < webhook_timeout <= deliveries.MAX_WEBHOOK_TIMEOUT_SECONDS:
            raise ValueError(f"the webhook timeout must be more than 0 and at most "
                             f"{deliveries.MAX_WEBHOOK_TIMEOUT_SECONDS:g} seconds")
        # One connection per concurrent send at most, kept alive between batches; each
        # send bounded by the timeout as a whole, not only per read.
        self.client = webhooks.client(webhook_timeout, webhook_concurrency)
        self._last_run_due: float | None = None
        self.stopped = threading.Event()

    def close(self) -> None:
        self.client.close()

    def run_due_if_time(self, monotonic: float) -> dict[str, Any] | None:
        if self.run_due_seconds <= 0:
            return None
        if self._last_run_due is not None and \
                monotonic - self._last_run_due < self.run_due_seconds:
            return None
        self._last_run_due = monotonic
        report = run_due(self.engine, self.clock()).as_dict()
        log.info("run-due", extra={"report": report})
        return report

    def deliver(self) -> deliveries.DeliveryReport:
        """Dispatch new outbox rows and send what is due, until nothing is left (bounded)."""
        total = deliveries.DeliveryReport()
        for _ in range(MAX_ROUNDS_PER_PASS):
            if self.stopped.is_set():
                break
            # Each step claims at the time it starts, not the round's: a lease runs from
            # the claim, and the webhooks before the emails may have taken a while.
            round_ = deliveries.DeliveryReport(
                dispatched=deliveries.dispatch(self.engine, self.clock()))
            round_.add(deliveries.deliver_webhooks(self.engine, self.clock(), self.client,
                                                   timeout=self.webhook_timeout,
                                                   concurrency=self.webhook_concurrency,
                                                   clock=self.clock, on_attempt=_count))
            if self.smtp is not None:
                round_.add(deliveries.deliver_emails(self.engine, self.clock(), self.smtp,
                                                     clock=self.clock, on_attempt=_count))
            total.add(round_)
            if not (round_.dispatched or round_.delivered or round_.failed or round_.dead
                    or round_.dropped or round_.released):
                break
        return total

    def run_once(self, monotonic: float = 0.0) -> deliveries.DeliveryReport:
        self.run_due_if_time(monotonic)
        return self.deliver()

    def run(self) -> None:
        """Until ``stopped`` is set: run-due every minute, deliveries whenever there are any.
        One failed pass (a database restart, say) is logged and the next one tries again."""
        import time

        while not self.stopped.is_set():
            busy = False
            try:
                self.run_due_if_time(time.monotonic())
                report = self.deliver()
                busy = bool(report.dispatched or report.delivered or report.failed
                            or report.released)
                if busy:
                    log.info("deliveries", extra={
                        "dispatched": report.dispatched, "delivered": report.delivered,
                        "failed": report.failed, "dead": report.dead})
            except Exception:  # noqa: BLE001 - logged; the next pass tries again
                log.exception("worker pass failed")
            if not busy:
                self.stopped.wait(IDLE_SECONDS)
