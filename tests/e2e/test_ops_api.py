"""Operations over HTTP on a live server: request ids and JSON logs, /metrics, webhook
endpoints and the dead-letter list."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from setia.adapters.db.tables_outbox import deliveries, outbox
from tests.e2e.api_server import (
    CAFE_PROGRAMME,
    LiveServer,
    assert_problem,
    create_key,
    database_url,
    live_server,
)

CAFE = CAFE_PROGRAMME["id"]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    directory: Path = tmp_path_factory.mktemp("ops-api")
    with database_url("sqlite", directory) as url, live_server(url, directory) as server:
        admin = server.client(server.admin_key)
        assert admin.put(f"/v1/programs/{CAFE}", json=CAFE_PROGRAMME).status_code == 201
        yield server


def metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    assert found, f"{name} not in /metrics"
    return float(found.group(1))


def test_each_answer_carries_a_request_id_and_logs_one_json_line_without_secrets(live):
    admin = live.client(live.admin_key)
    given = admin.get(f"/v1/programs/{CAFE}", headers={"X-Request-ID": "till-7.req-42"})
    made = admin.get(f"/v1/programs/{CAFE}", headers={"X-Request-ID": "not a token!"})
    assert given.headers["x-request-id"] == "till-7.req-42"
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
    lines = [json.loads(line) for line in live.log().splitlines() if line.startswith("{")]
    [mine] = [line for line in lines if line.get("request_id") == "till-7.req-42"]
    assert {k: mine[k] for k in ("level", "logger", "message", "method", "route", "status")} \
        == {"level": "INFO", "logger": "setia.http", "message": "request", "method": "GET",
            "route": "/v1/programs/{program}", "status": 200}
    assert live.admin_key not in live.log()


def test_metrics_count_requests_events_points_and_show_the_outbox(live):
    admin = live.client(live.admin_key)
    before = admin.get("/metrics").text
    issued = metric(before, "setia_points_issued_total")
    assert admin.put(f"/v1/programs/{CAFE}/members/metrics-1", json={}).status_code == 201
    event = {"id": "metrics-ev-1", "type": "purchase", "member": "metrics-1",
             "occurred_at": "2027-03-01T10:00:00+08:00", "order_id": "metrics-ord-1",
             "amount": "12.00"}
    assert admin.post(f"/v1/programs/{CAFE}/events", json=event).status_code == 201
    assert admin.post(f"/v1/programs/{CAFE}/events", json=event).status_code == 200
    after = admin.get("/metrics")
    assert after.headers["content-type"].startswith("text/plain")
    # base 12 + first-visit 100 (the signup's 50 came from the member PUT, not an event)
    assert metric(after.text, "setia_points_issued_total") - issued == 112
    assert metric(after.text, 'setia_events_ingested_total{status="replayed"}') >= 1
    assert metric(after.text, 'setia_http_request_duration_seconds_count{method="POST",'
                              'route="/v1/programs/{program}/events",status="201"}') >= 1
    # no worker runs here: the enrolment's and the event's rows wait in the outbox
    assert metric(after.text, "setia_outbox_lag_seconds") >= 0
    assert "setia_delivery_retries" in after.text


def test_webhook_endpoints_and_dead_letters_are_for_admins(live):
    admin = live.client(live.admin_key)
    pos = live.client(create_key(live.db_url, "pos"))
    created = admin.post(f"/v1/programs/{CAFE}/webhooks",
                         json={"url": "https://shop.example/hooks", "types": ["tier.changed"]})
    assert created.status_code == 201
    body = created.json()
    assert body["secret"].startswith("whsec_") and body["types"] == ["tier.changed"]
    listed = admin.get(f"/v1/programs/{CAFE}/webhooks").json()["webhooks"]
    assert [(w["id"], w["url"], "secret" in w) for w in listed] == [
        (body["id"], "https://shop.example/hooks", False)]
    assert_problem(pos.get(f"/v1/programs/{CAFE}/webhooks"), 403, "forbidden")
    assert_problem(admin.post(f"/v1/programs/{CAFE}/webhooks", json={"url": "ftp://x"}),
                   422, "invalid-field", "url")
    assert_problem(admin.post(f"/v1/programs/{CAFE}/webhooks",
                              json={"url": "https://x.example", "types": ["points.spent"]}),
                   422, "invalid-field", "types")
    assert admin.get(f"/v1/programs/{CAFE}/webhooks").json()["webhooks"] == listed
    # a second registration (a retry) is removed by an admin only, once
    extra = admin.post(f"/v1/programs/{CAFE}/webhooks",
                       json={"url": "https://shop.example/hooks"}).json()["id"]
    assert_problem(pos.delete(f"/v1/programs/{CAFE}/webhooks/{extra}"), 403, "forbidden")
    removed = admin.delete(f"/v1/programs/{CAFE}/webhooks/{extra}")
    assert (removed.status_code, removed.content) == (204, b"")
    assert_problem(admin.delete(f"/v1/programs/{CAFE}/webhooks/{extra}"), 404,
                   "unknown-webhook", "webhook")
    assert_problem(admin.delete("/v1/programs/no-such-programme/webhooks/we_1"), 404,
                   "unknown-programme")
    assert admin.get(f"/v1/programs/{CAFE}/webhooks").json()["webhooks"] == listed
    assert admin.get(f"/v1/programs/{CAFE}/dead-letters").json() == {"deliveries": []}
    assert_problem(admin.post(f"/v1/programs/{CAFE}/dead-letters/replay", json={}),
                   422, "invalid-field")
    replayed = admin.post(f"/v1/programs/{CAFE}/dead-letters/replay", json={"ids": [1, 2]},
                          headers={"Idempotency-Key": "replay-1"})
    assert replayed.status_code == 200 and replayed.json() == {"replayed": 0}


def test_a_chunked_replay_body_is_read_and_queues_only_the_deliveries_it_names(live):
    # Given three dead deliveries of the programme's outbox messages
    admin = live.client(live.admin_key)
    assert admin.put(f"/v1/programs/{CAFE}/members/dead-1", json={}).status_code == 201
    now = datetime.now(UTC)
    with live.engine.begin() as conn:
        message = conn.execute(sa.select(sa.func.max(outbox.c.id))).scalar_one()
        dead = [conn.execute(deliveries.insert().values(
            outbox_id=message, program_id=CAFE, channel="webhook", target=f"ep-dead-{n}",
            status="dead", attempts=19, next_attempt_at=now, window_started_at=now,
            last_error="HTTP 500", created_at=now)).inserted_primary_key[0] for n in range(3)]

    def statuses() -> list[str]:
        with live.engine.connect() as conn:
            return list(conn.execute(sa.select(deliveries.c.status).where(
                deliveries.c.id.in_(dead)).order_by(deliveries.c.id)).scalars())

    # When the replay names the first of them in a chunked body (no Content-Length)
    def chunks() -> Iterator[bytes]:
        yield b'{"ids": ['
        yield str(dead[0]).encode() + b"]}"

    replayed = admin.post(f"/v1/programs/{CAFE}/dead-letters/replay", content=chunks(),
                          headers={"Content-Type": "application/json",
                                   "Idempotency-Key": "replay-chunked"})

    # Then only that one is queued again; the others stay dead
    assert replayed.status_code == 200, replayed.text
    assert replayed.request.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in replayed.request.headers
    assert replayed.json() == {"replayed": 1}
    assert statuses() == ["pending", "dead", "dead"]
    # and a chunked body that is empty still means all of them
    empty = admin.post(f"/v1/programs/{CAFE}/dead-letters/replay", content=iter([b""]),
                       headers={"Idempotency-Key": "replay-chunked-all"})
    assert empty.status_code == 200, empty.text
    assert empty.json() == {"replayed": 2}
    assert statuses() == ["pending", "pending", "pending"]
