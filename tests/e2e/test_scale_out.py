"""Three ``setia worker`` processes and two ``setia serve`` processes on one PostgreSQL
database under load: no posting, expiry, email or webhook happens twice."""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from setia.adapters.db.engine import make_engine
from setia.adapters.db.migrate import upgrade
from tests.e2e.api_server import (
    ADMIN_KEY,
    SETIA,
    assert_setia_check_ok,
    database_url,
    live_server,
    setia_env,
)
from tests.receivers import MailBox, WebhookReceiver, smtp_server, webhook_receiver

pytestmark = pytest.mark.postgres
P = "scale"
MEMBERS = 8
EVENTS = 48
PROGRAMME: dict[str, Any] = {
    "id": P, "name": "Scale Cafe", "currency": "MYR", "timezone": "Asia/Kuala_Lumpur",
    "locale": "en",
    "points": {"name": "Beans", "pending_days": 0, "expiry": {"policy": "rolling", "months": 1}},
    "earn": [{"id": "base", "on": "purchase", "rate": 1},
             {"id": "welcome", "on": "signup", "points": 50}],
    "tiers": {"metric": "spend", "window": "rolling_months", "window_months": 3,
              "levels": [{"id": "member", "name": "Member", "threshold": 0},
                         {"id": "gold", "name": "Gold", "threshold": 60}]},
}


def event(i: int, now: datetime) -> dict[str, Any]:
    """Every fourth event happened 40 days ago: its lot (1 month) has expired by now; the
    rest 5 days ago: they expire within 30 days (an expiry notice)."""
    days = 40 if i % 4 == 0 else 5
    return {"id": f"ev-{i}", "type": "purchase", "member": f"m-{i % MEMBERS}",
            "order_id": f"ord-{i}", "amount": f"{10 + i % 5}.00",
            "occurred_at": (now - timedelta(days=days)).isoformat()}


def settled(engine: sa.Engine) -> bool:
    with engine.connect() as conn:
        return conn.execute(sa.text(
            "SELECT (SELECT count(*) FROM outbox WHERE dispatched_at IS NULL) "
            "+ (SELECT count(*) FROM deliveries WHERE status <> 'delivered') "
            "+ (SELECT count(*) FROM lots WHERE remaining > 0 AND expires_at <= now() "
            "   AT TIME ZONE 'UTC')")).scalar_one() == 0


def test_three_workers_and_two_api_processes_do_nothing_twice(tmp_path: Path):
    now = datetime.now(UTC)
    box = MailBox()
    with ExitStack() as stack:
        db_url = stack.enter_context(database_url("postgres", tmp_path, "setia_scale"))
        engine = make_engine(db_url)
        stack.callback(engine.dispose)
        upgrade(engine)  # once, before five processes start on it
        receiver = stack.enter_context(webhook_receiver(WebhookReceiver()))
        smtp_port = stack.enter_context(smtp_server(box))
        apis = [stack.enter_context(live_server(db_url, tmp_path)) for _ in range(2)]
        admin = httpx.Client(base_url=apis[0].base_url, timeout=30,
                             headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        stack.callback(admin.close)
        assert admin.put(f"/v1/programs/{P}", json=PROGRAMME).status_code == 201
        hook = admin.post(f"/v1/programs/{P}/webhooks", json={"url": receiver.url}).json()
        receiver.secret = hook["secret"]
        workers = []
        for n in range(3):
            log = (tmp_path / f"worker-{n}.log").open("wb")
            stack.callback(log.close)
            process = subprocess.Popen(
                [SETIA, "worker", "--run-due-every", "0.5", "--webhook-timeout", "5"],
                env=setia_env(db_url, SETIA_SMTP_HOST="127.0.0.1",
                              SETIA_SMTP_PORT=str(smtp_port)),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            workers.append(process)
            stack.callback(process.wait, 30)
            stack.callback(process.terminate)

        def put_member(m: int) -> int:
            url = apis[m % 2].base_url
            return httpx.put(f"{url}/v1/programs/{P}/members/m-{m}", timeout=30,
                             json={"email": f"m-{m}@example.com"},
                             headers={"Authorization": f"Bearer {ADMIN_KEY}"}).status_code

        def post(job: tuple[int, int]) -> dict[str, Any]:
            i, copy = job  # every event goes to both API processes at about the same time
            url = apis[(i + copy) % 2].base_url
            for _ in range(50):
                r = httpx.post(f"{url}/v1/programs/{P}/events", json=event(i, now), timeout=30,
                               headers={"Authorization": f"Bearer {ADMIN_KEY}"})
                if r.status_code != 503:
                    assert r.status_code in (200, 201), r.text
                    return r.json()  # type: ignore[no-any-return]
                time.sleep(1)
            raise AssertionError("still busy")

        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(put_member, range(MEMBERS))) == [201] * MEMBERS
            results = list(pool.map(post, [(i, c) for i in range(EVENTS) for c in (0, 1)]))
        deadline = time.monotonic() + 120
        while not settled(engine):  # bounded wait for the workers to finish the queue
            assert time.monotonic() < deadline, "the workers did not settle in 120 s"
            assert all(w.poll() is None for w in workers)
            time.sleep(0.5)
        time.sleep(1.5)  # a few more run-due passes by every worker: nothing new may come
        assert settled(engine)
        verify(engine, db_url, results, receiver, box, tmp_path)


def verify(engine: sa.Engine, db_url: str, results: list[dict[str, Any]],
           receiver: WebhookReceiver, box: MailBox, tmp_path: Path) -> None:
    # Each event applied once (the other copy replayed), with one earn posting
    statuses = Counter(r["status"] for r in results)
    assert statuses == {"applied": EVENTS, "replayed": EVENTS}
    with engine.connect() as conn:
        earn = conn.execute(sa.text(
            "SELECT ref, count(*), sum(points) FROM postings WHERE code = 'earn' "
            "AND ref LIKE 'ev-%' GROUP BY ref")).all()
        expired = conn.execute(sa.text(
            "SELECT count(*), coalesce(sum(points), 0) FROM postings WHERE code = 'expire'"
        )).one()
        outbox = conn.execute(sa.text("SELECT id, type, data FROM outbox ORDER BY id")).all()
        emails = conn.execute(sa.text(
            "SELECT count(*) FROM deliveries WHERE channel = 'email'")).scalar_one()
    assert sorted((ref, count, points) for ref, count, points in earn) == sorted(
        (f"ev-{i}", 1, 10 + i % 5) for i in range(EVENTS))
    # Each expired lot expired once: the 20 old purchases, in full (nothing was spent)
    old = [10 + i % 5 for i in range(EVENTS) if i % 4 == 0]
    assert (expired[0], expired[1]) == (len(old), sum(old))
    # Each outbox row reached the webhook receiver once, verified, and each email once
    kinds = Counter(kind for _, kind, _ in outbox)
    assert kinds["member.enrolled"] == MEMBERS
    assert sum(json.loads(data)["points"] for _, kind, data in outbox
               if kind == "points.expired") == sum(old)
    assert all(r.verified for r in receiver.received)
    assert sorted(receiver.ids()) == sorted(f"msg_{row_id}" for row_id, _, _ in outbox)
    ids = [m["Message-ID"] for m in box.messages]
    assert len(ids) == len(set(ids)) == emails
    assert emails == sum(kinds[k] for k in ("member.enrolled", "tier.changed",
                                            "points.expiring"))
    assert_setia_check_ok(db_url)
    assert not any(json.loads(line).get("level") == "ERROR"
                   for n in range(3)
                   for line in (tmp_path / f"worker-{n}.log").read_text().splitlines()
                   if line.startswith("{"))
