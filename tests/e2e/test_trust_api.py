"""Operations and trust over HTTP, against a live ``setia serve``: rate limits (429 with
Retry-After), security headers, member tokens and /v1/me, the audit log, privacy and the
review queue routes, and logs that hold no secret or personal data."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from setia.adapters.db.engine import make_engine
from setia.entrypoints.api.security import RedactSecrets
from setia.service import members
from tests.e2e.api_server import (
    CAFE_PROGRAMME,
    LiveServer,
    assert_problem,
    assert_setia_check_ok,
    create_key,
    database_url,
    live_server,
)

CAFE = CAFE_PROGRAMME["id"]
API = f"/v1/programs/{CAFE}"
PROFILE = {"name": "Nurul Huda", "email": "nurul.huda@example.my", "phone": "+60 19-876 5432"}
FRAUD_CAFE = {**CAFE_PROGRAMME, "fraud": {"velocity": [{"per": "day", "max_points": 100}]}}


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LiveServer]:
    monkeypatch.setenv("SETIA_RATE_LIMIT_PER_KEY", "1000/minute")
    monkeypatch.setenv("SETIA_RATE_LIMIT_PER_IP", "1000/minute")
    with database_url("sqlite", tmp_path) as url, live_server(url, tmp_path) as live:
        admin = live.client(live.admin_key)
        assert admin.put(API, json=FRAUD_CAFE).status_code == 201
        assert admin.put(f"{API}/members/cust-1", json=PROFILE).status_code == 201
        assert admin.put(f"{API}/members/cust-2", json={}).status_code == 201
        admin.close()
        yield live
        assert_setia_check_ok(url)


def test_every_answer_carries_the_security_headers(server: LiveServer) -> None:
    with server.client() as anonymous:
        for response in (anonymous.get("/health"), anonymous.get(f"{API}/members/cust-1")):
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["x-frame-options"] == "DENY"
            assert response.headers["referrer-policy"] == "no-referrer"
            assert response.headers["content-security-policy"] == (
                "default-src 'none'; frame-ancestors 'none'")
            assert response.headers["strict-transport-security"].startswith("max-age=31536000")
        assert anonymous.get(f"{API}/members/cust-1").status_code == 401


def test_a_member_token_reads_and_redeems_only_for_its_member(server: LiveServer) -> None:
    with server.client(server.admin_key) as admin:
        issued = admin.post(f"{API}/members/cust-1/tokens", json={"days": 7})
        assert issued.status_code == 201, issued.text
        token = issued.json()["token"]
        assert token.startswith("smt_")
        assert admin.post(f"{API}/adjustments", json={"member": "cust-1", "points": 200,
                                                       "reason": "welcome gift"},
                          headers={"Idempotency-Key": "adj-1"}).status_code == 201

    with server.client(token) as member:
        me = member.get("/v1/me")
        assert me.status_code == 200
        assert (me.json()["id"], me.json()["balances"]) == (
            "cust-1", {"available": 250, "pending": 0, "reserved": 0})
        activity = member.get("/v1/me/activity").json()["data"]
        assert [line["points"] for line in activity] == [200, 50]
        redeemed = member.post("/v1/me/redemptions", json={"reward": "free-latte"},
                               headers={"Idempotency-Key": "r-1"})
        assert redeemed.status_code == 201, redeemed.text
        assert (redeemed.json()["member"], redeemed.json()["balances"]["available"]) == (
            "cust-1", 100)
        # another member's data, another member's redemption: refused, nothing changes
        assert_problem(member.get(f"{API}/members/cust-2"), 401, "unauthorized")
        assert_problem(member.post("/v1/me/redemptions",
                                   json={"member": "cust-2", "reward": "cap"},
                                   headers={"Idempotency-Key": "r-2"}), 403, "forbidden")
        assert member.get("/v1/me").json()["balances"]["available"] == 100
        # a key of 200 characters, as staff may send: kept, replayed, and a conflict names
        # it as sent (not as kept, which names the member's row)
        long_key = "k" * 200
        first = member.post("/v1/me/redemptions", json={"points": 10},
                            headers={"Idempotency-Key": long_key})
        assert first.status_code == 201, first.text
        again = member.post("/v1/me/redemptions", json={"points": 10},
                            headers={"Idempotency-Key": long_key})
        assert (again.status_code, again.json()) == (201, first.json())
        assert member.get("/v1/me").json()["balances"]["available"] == 90
        other = member.post("/v1/me/redemptions", json={"points": 20},
                            headers={"Idempotency-Key": "r-1"})
        assert_problem(other, 409, "idempotency-conflict")
        assert other.json()["detail"] == ("idempotency key 'r-1' was already used for a "
                                          "different request")
        assert member.get("/v1/me").json()["balances"]["available"] == 90
    with server.client("smt_000000000000_wrong") as stranger:
        assert_problem(stranger.get("/v1/me"), 401, "unauthorized")


def answer_to_a_64_mib_body(server: LiveServer, path: str, start: bytes,
                            headers: str = "") -> bytes:
    """What the server answers an admin's POST to ``API + path`` that says its body is 64
    MiB and sends only ``start`` of it: read until the problem's type arrives (a server
    that read the whole body first would time out)."""
    host, port = server.base_url.removeprefix("http://").split(":")
    head = (f"POST {API}{path} HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {server.admin_key}\r\n{headers}"
            "Content-Type: application/json\r\nContent-Length: 67108864\r\n\r\n")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(head.encode() + start)
        answer = b""
        while b"body-too-large" not in answer:
            piece = conn.recv(65536)
            assert piece, answer
            answer += piece
    return answer


def test_a_member_token_body_is_refused_past_one_mebibyte_before_it_is_read(
        server: LiveServer) -> None:
    # Given a request for a member token that says its body is 64 MiB, of which only the
    # first bytes are sent; when the server answers, without waiting for the rest
    answer = answer_to_a_64_mib_body(server, "/members/cust-1/tokens", b'{"days": ')
    # Then it is 413, and no token was issued
    assert answer.startswith(b"HTTP/1.1 413 "), answer
    with server.engine.connect() as conn_db:
        assert conn_db.execute(sa.text("SELECT count(*) FROM member_tokens")).scalar_one() == 0
    # and a token asked for with a chunked body, or none, is issued as asked
    with server.client(server.admin_key) as admin:
        chunked = admin.post(f"{API}/members/cust-1/tokens", content=iter([b'{"days"', b": 7}"]),
                             headers={"Content-Type": "application/json"})
        empty = admin.post(f"{API}/members/cust-1/tokens", content=iter([b""]))
    assert chunked.status_code == 201 and empty.status_code == 201, (chunked.text, empty.text)
    days = [(datetime.fromisoformat(answer.json()["expires_at"]) - datetime.now(UTC)).days
            for answer in (chunked, empty)]
    assert days == [6, 29]  # 7 and 30 days from a moment ago


@pytest.mark.parametrize("path", ["/referrals/ref-x/approve", "/members/cust-1/membership/cancel",
                                  "/credit/holds/h-x/release"])
def test_an_optional_body_is_refused_past_one_mebibyte_before_it_is_read(
        server: LiveServer, path: str) -> None:
    # Given a request to a route whose body may be left out, that says its body is 64 MiB,
    # of which only the first bytes are sent; when the server answers, without waiting
    answer = answer_to_a_64_mib_body(server, path, b'{"reason": ',
                                     "Idempotency-Key: big-1\r\n")
    # Then it is 413
    assert answer.startswith(b"HTTP/1.1 413 "), answer


def test_admin_actions_are_in_the_audit_log_with_who_did_them(server: LiveServer) -> None:
    key = create_key(server.db_url, "admin")
    key_id = key.split("_")[1]
    with server.client(key) as admin:
        assert admin.post(f"{API}/adjustments", json={"member": "cust-2", "points": 30,
                                                       "reason": "goodwill"},
                          headers={"Idempotency-Key": "adj-9"}).status_code == 201
        rows = admin.get("/v1/audit", params={"program": CAFE}).json()["data"]
    assert [(r["action"], r["actor"]) for r in rows] == [
        ("programme.store", "key:env:SETIA_ADMIN_KEY"),
        ("adjust", f"key:{key_id}"),
    ]
    assert rows[1]["before"] == {"balances": {"available": 50, "pending": 0, "reserved": 0}}
    assert rows[1]["after"] == {"balances": {"available": 80, "pending": 0, "reserved": 0},
                                "points": 30, "reason": "goodwill"}
    # append-only: the database refuses to change or remove a row
    with server.engine.begin() as conn, pytest.raises(sa.exc.DatabaseError):
        conn.execute(sa.text("UPDATE audit_log SET actor = 'someone else'"))
    with server.engine.begin() as conn, pytest.raises(sa.exc.DatabaseError):
        conn.execute(sa.text("DELETE FROM audit_log"))


def test_export_erase_and_the_review_queue_over_http(server: LiveServer) -> None:
    with server.client(server.admin_key) as admin:
        event = {"id": "big-1", "type": "purchase", "member": "cust-1", "order_id": "ob-1",
                 "occurred_at": "2026-03-02T10:00:00+08:00", "amount": "120.00",
                 "currency": "MYR", "store": "pg-01"}
        applied = admin.post(f"{API}/events", json=event).json()
        # base 120 + first-visit 100 = 220 > 100 points a day: held for review
        assert applied["review"]["held"] is True
        queue = admin.get(f"{API}/reviews").json()["data"]
        assert [(r["member"], r["event"], r["points"]) for r in queue] == [
            ("cust-1", "big-1", 220)]
        approved = admin.post(f"{API}/reviews/{queue[0]['id']}/approve",
                              headers={"Idempotency-Key": "rv-1"})
        assert approved.status_code == 200, approved.text
        assert approved.json()["balances"] == {"available": 270, "pending": 0, "reserved": 0}

        export = admin.get(f"{API}/members/cust-1/export")
        assert export.status_code == 200
        assert export.json()["member"]["email"] == PROFILE["email"]
        assert [e["id"] for e in export.json()["events"]] == ["big-1", "signup:cust-1"]

        # without a key, or with an unknown field for a token: refused as everywhere else
        # (a 400 malformed-request without the field, and an unknown field ignored)
        assert_problem(admin.post(f"{API}/members/cust-1/erase"), 422, "invalid-field",
                       "Idempotency-Key")
        assert_problem(admin.post(f"{API}/reviews/1/approve"), 422, "invalid-field",
                       "Idempotency-Key")
        assert_problem(admin.post(f"{API}/members/cust-1/tokens", json={"day": 7}), 422,
                       "invalid-field", "day")
        erased = admin.post(f"{API}/members/cust-1/erase", headers={"Idempotency-Key": "er-1"})
        assert erased.status_code == 200, erased.text
        pseudonym = erased.json()["member"]
        assert_problem(admin.get(f"{API}/members/cust-1"), 404, "unknown-member")
        view = admin.get(f"{API}/members/{pseudonym}").json()
        assert (view["name"], view["email"], view["balances"]["available"]) == (None, None, 270)
        assert_problem(admin.post(f"{API}/reviews/999/reject",
                                  headers={"Idempotency-Key": "rv-2"}), 404, "unknown-review")


def test_no_secret_or_personal_data_reaches_the_server_log(server: LiveServer) -> None:
    key = create_key(server.db_url, "admin")
    with server.client(server.admin_key) as admin:
        token = admin.post(f"{API}/members/cust-1/tokens").json()["token"]
        admin.put(f"{API}/members/cust-1", json={**PROFILE, "birthday": "1991-02-03"})
        admin.get(f"{API}/members/cust-1/export")
    with server.client(key) as other:
        other.get(f"{API}/members/cust-1")
    with server.client(token) as member:
        member.get("/v1/me")
    with server.client(key + "x") as wrong:
        assert wrong.get(f"{API}/members/cust-1").status_code == 401
    log = server.log()
    assert "Uvicorn running" in log or "Application startup complete" in log  # it logs
    for secret in (server.admin_key, key, key.split("_", 2)[2], token, token.split("_", 2)[2],
                   PROFILE["name"], PROFILE["email"], "876 5432", "1991-02-03"):
        assert secret not in log


def test_the_log_filter_redacts_keys_tokens_contacts_and_sql_parameters(tmp_path: Path) -> None:
    # A real SQLAlchemy error carries the statement's parameters, here an email address
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE people (email TEXT PRIMARY KEY)"))
        conn.execute(sa.text("INSERT INTO people VALUES ('ali@example.my')"))
    logger = logging.getLogger("setia.test-redaction")
    path = tmp_path / "log.txt"
    handler = logging.FileHandler(path)
    handler.addFilter(RedactSecrets())
    logger.addHandler(handler)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO people VALUES (:e)"), {"e": "ali@example.my"})
    except sa.exc.IntegrityError:
        logger.exception("insert failed for %s with %s", "ali@example.my",
                         "Bearer sk_0a1b2c3d4e5f_s3cr3tPart-xyz")
    logger.warning("member phone +60 12-345 6789 and token smt_abcdef123456_tokenSecret9")
    logger.removeHandler(handler)
    handler.close()
    engine.dispose()
    text = path.read_text()
    assert "IntegrityError" in text and "[parameters: redacted]" in text
    for secret in ("ali@example.my", "s3cr3tPart", "345 6789", "tokenSecret9"):
        assert secret not in text
    assert "smt_abcdef123456_[redacted]" in text


def test_rate_limits_per_key_and_per_address_answer_429_with_retry_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SETIA_RATE_LIMIT_PER_KEY", "3/minute")
    monkeypatch.setenv("SETIA_RATE_LIMIT_PER_IP", "5/minute")
    with database_url("sqlite", tmp_path) as url, live_server(url, tmp_path) as live:
        key = create_key(url, "admin")
        with live.client(key) as first, live.client(live.admin_key) as second:
            # the first key's fourth request is over its 3 a minute
            answers = [first.get(API) for _ in range(4)]
            assert [a.status_code for a in answers] == [404, 404, 404, 429]
            body = assert_problem(answers[3], 429, "rate-limited")
            retry_after = int(answers[3].headers["retry-after"])
            assert 1 <= retry_after <= 60 and body["retry_after"] == retry_after
            assert "API key" in body["detail"]
            assert answers[3].headers["x-content-type-options"] == "nosniff"
            # another key has its own count, but the address has used 5 of its 5
            assert second.get(API).status_code == 404
            over = second.get(API)
            assert "client address" in assert_problem(over, 429, "rate-limited")["detail"]
            assert int(over.headers["retry-after"]) >= 1
            # health checks are never limited
            assert [second.get("/health").status_code for _ in range(3)] == [200, 200, 200]


def test_requests_with_a_wrong_secret_do_not_spend_the_real_keys_limit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SETIA_RATE_LIMIT_PER_KEY", "5/minute")
    monkeypatch.setenv("SETIA_RATE_LIMIT_PER_IP", "1000/minute")
    with database_url("sqlite", tmp_path) as url, live_server(url, tmp_path) as live:
        # Given a programme with a member of 250 points, a till's key and a member token
        with live.client(live.admin_key) as admin:
            assert admin.put(API, json=FRAUD_CAFE).status_code == 201
            assert admin.put(f"{API}/members/cust-1", json={}).status_code == 201
            assert admin.post(f"{API}/adjustments", json={
                "member": "cust-1", "points": 200, "reason": "welcome gift"},
                headers={"Idempotency-Key": "adj-1"}).status_code == 201
            token = admin.post(f"{API}/members/cust-1/tokens").json()["token"]
        till_key = create_key(url, "pos")

        def state() -> tuple[Any, int]:  # read beside the API: the admin key has a limit too
            return members.get_member(live.engine, CAFE, "cust-1")["balances"], live.postings()

        before = state()
        assert before[0] == {"available": 250, "pending": 0, "reserved": 0}
        # When a stranger who knows only the public ids sends 5 redemptions with each
        key_id, token_id = till_key.split("_")[1], token.split("_")[1]
        redeem = {"member": "cust-1", "points": 10}
        with live.client(f"sk_{key_id}_wrong") as stranger:
            refused = [stranger.post(f"{API}/redemptions", json=redeem,
                                     headers={"Idempotency-Key": f"s-{i}"}) for i in range(5)]
        with live.client(f"smt_{token_id}_wrong") as stranger:
            refused += [stranger.post("/v1/me/redemptions", json={"points": 10},
                                      headers={"Idempotency-Key": f"m-{i}"}) for i in range(5)]
        # Then each is refused as unauthorized, and nothing changed
        for answer in refused:
            assert_problem(answer, 401, "unauthorized")
        assert state() == before
        # And the till and the member still have their own 5 requests a minute each
        with live.client(till_key) as till, live.client(token) as member:
            assert [till.get(f"{API}/members/cust-1").status_code for _ in range(6)] \
                == [200] * 5 + [429]
            assert [member.get("/v1/me").status_code for _ in range(6)] == [200] * 5 + [429]


def test_failed_authentications_count_against_the_address(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SETIA_RATE_LIMIT_PER_KEY", "2/minute")
    monkeypatch.setenv("SETIA_RATE_LIMIT_PER_IP", "4/minute")
    with database_url("sqlite", tmp_path) as url, live_server(url, tmp_path) as live:
        key = create_key(url, "admin")
        with live.client(key[:-1] + ("x" if key[-1] != "x" else "y")) as stranger:
            # wrong secrets are not counted per key (2 a minute) but per address (4)
            answers = [stranger.get(API) for _ in range(5)]
        assert [a.status_code for a in answers] == [401] * 4 + [429]
        assert "client address" in assert_problem(answers[4], 429, "rate-limited")["detail"]
