"""End to end over HTTP: store credit (cashback, holds at the till, statements) and partner
settlement on a real ``setia serve``, SQLite and PostgreSQL. Every refused request is
followed by a check that the member's points and credit and the journal are unchanged;
the module ends with ``setia check``.

The programme ``e2e-coalition`` (MYR): base 1 point per RM; 1% instant cashback on every
purchase and 5% on pastry lines; a quarterly tiered rebate (1% up to RM 500, 2% above);
partners kopi and roti at RM 0.01 a point.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import sqlalchemy as sa

from setia.adapters.db.tables_partners import settlement_postings
from tests.e2e.api_server import (
    LiveServer,
    assert_problem,
    assert_setia_check_ok,
    create_key,
    database_url,
    live_server,
    run_setia,
)

PROGRAM = "e2e-coalition"
API = f"/v1/programs/{PROGRAM}"
COALITION_PROGRAMME: dict[str, Any] = {
    "id": PROGRAM, "name": "E2E Coalition", "currency": "MYR",
    "timezone": "Asia/Kuala_Lumpur",
    "earn": [{"id": "base", "on": "purchase", "rate": 1}],
    "cashback": {
        "instant": [{"id": "all", "percent": 1},
                    {"id": "pastry", "categories": ["pastry"], "percent": 5}],
        "tiered": [{"id": "quarterly", "per": "quarter",
                    "bands": [{"up_to": "500.00", "percent": 1}, {"percent": 2}]}],
    },
    "partners": {"point_value": "0.01", "merchants": [{"id": "kopi", "name": "Kopi"},
                                                      {"id": "roti", "name": "Roti"}]},
}


@dataclass
class Api:
    live: LiveServer
    admin: httpx.Client
    pos: httpx.Client
    reader: httpx.Client

    def enrol(self, member: str) -> None:
        response = self.admin.put(f"{API}/members/{member}",
                                  json={"enrolled_at": "2021-01-01T09:00:00+08:00"})
        assert response.status_code == 201, response.text

    def buy(self, event_id: str, member: str, amount: str, partner: str | None = None,
            when: str = "2021-02-01T10:00:00+08:00", **more: Any) -> dict[str, Any]:
        body = {"id": event_id, "type": "purchase", "member": member, "occurred_at": when,
                "order_id": f"ord-{event_id}", "amount": amount, **more}
        if partner is not None:
            body["partner"] = partner
        response = self.pos.post(f"{API}/events", json=body)
        assert response.status_code == 201, response.text
        return response.json()  # type: ignore[no-any-return]

    def credit(self, member: str) -> dict[str, Any]:
        response = self.reader.get(f"{API}/members/{member}/credit")
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    def hold(self, body: Any, key: str) -> httpx.Response:
        return self.pos.post(f"{API}/credit/holds", json=body, headers={"Idempotency-Key": key})

    def snapshot(self, member: str) -> tuple[Any, ...]:
        points = self.admin.get(f"{API}/members/{member}").json()["balances"]
        return points, self.credit(member), self.live.postings()


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres",
                                                                marks=pytest.mark.postgres)])
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    directory = tmp_path_factory.mktemp(f"credit-{request.param}")
    with database_url(request.param, directory, "setia_e2e_credit") as url, \
            live_server(url, directory) as live:
        admin = live.client(live.admin_key)
        stored = admin.put(API, json=COALITION_PROGRAMME)
        assert stored.status_code == 201, stored.text
        pos = live.client(create_key(url, "pos"))
        reader = live.client(create_key(url, "member-read"))
        yield Api(live, admin, pos, reader)
        for client in (admin, pos, reader):
            client.close()
        assert_setia_check_ok(url)


def test_cashback_hold_capture_and_statement_over_http(api: Api) -> None:
    api.enrol("cb-1")
    # 1% of 42.50 -> 0.42; 5% of 18.50 -> 0.92
    api.buy("cb-1-e1", "cb-1", "42.50", lines=[
        {"sku": "LATTE", "category": "coffee", "amount": "24.00"},
        {"sku": "CROISSANT", "category": "pastry", "amount": "18.50"}])
    assert api.credit("cb-1") == {"member": "cb-1", "asset": "credit:MYR", "currency": "MYR",
                                  "available": "1.34", "reserved": "0.00"}
    held = api.hold({"member": "cb-1", "amount": "1.00", "reference": "till-7"}, "cb-1-h1")
    assert held.status_code == 201, held.text
    view = held.json()
    assert (view["status"], view["amount"], view["reference"], view["balances"]) == (
        "held", "1.00", "till-7", {"available": "0.34", "reserved": "1.00"})
    again = api.hold({"member": "cb-1", "amount": "1.00", "reference": "till-7"}, "cb-1-h1")
    assert again.json() == view
    captured = api.pos.post(f"{API}/credit/holds/{view['id']}/capture",
                            json={"amount": "0.80"}, headers={"Idempotency-Key": "cb-1-c1"})
    assert captured.status_code == 200, captured.text
    assert (captured.json()["status"], captured.json()["captured"],
            captured.json()["balances"]) == (
        "captured", "0.80", {"available": "0.54", "reserved": "0.00"})

    statement = api.reader.get(f"{API}/members/cb-1/credit/statement",
                               params={"period": "2021-Q1"})
    assert statement.status_code == 200, statement.text
    body = statement.json()
    assert (body["opening_balance"], body["earned"], body["spent"], body["closing_balance"]) \
        == ("0.00", "1.34", "0.00", "1.34")
    # the capture's year (Kuala Lumpur's), from the time the server posted it at
    with api.live.engine.connect() as conn:
        captured_at = conn.execute(sa.text(
            "SELECT max(occurred_at) FROM postings WHERE code = 'capture' "
            "AND asset = 'credit:MYR'")).scalar_one()
    if isinstance(captured_at, str):  # SQLite's text
        captured_at = datetime.fromisoformat(captured_at)
    year = str(captured_at.replace(tzinfo=UTC).astimezone(ZoneInfo("Asia/Kuala_Lumpur")).year)
    today = api.reader.get(f"{API}/members/cb-1/credit/statement",
                           params={"period": year}).json()
    assert (today["opening_balance"], today["spent"], today["closing_balance"]) == (
        "1.34", "0.80", "0.54")
    as_csv = api.reader.get(f"{API}/members/cb-1/credit/statement",
                            params={"period": "2021-Q1", "format": "csv"})
    assert as_csv.status_code == 200
    assert as_csv.headers["content-type"] == "text/csv; charset=utf-8"
    rows = list(csv.reader(io.StringIO(as_csv.text)))
    assert rows[0] == ["occurred_at", "code", "rule", "ref", "explanation", "amount", "balance"]
    assert [(row[1], row[5], row[6]) for row in rows[1:]] == [
        ("opening", "", "0.00"), ("cashback", "0.42", "0.42"), ("cashback", "0.92", "1.34"),
        ("closing", "", "1.34"), ("total-earned", "1.34", ""),
        ("total-clawed-back", "0.00", ""), ("total-spent", "0.00", ""),
        ("total-adjusted", "0.00", "")]


def test_bad_store_credit_requests_are_problems_and_change_nothing(api: Api) -> None:
    api.enrol("cb-2")
    api.buy("cb-2-e1", "cb-2", "100.00")  # 1.00 of credit
    open_hold = api.hold({"member": "cb-2", "amount": "0.50"}, "cb-2-h1").json()
    before = api.snapshot("cb-2")
    refusals = [
        (api.hold({"member": "cb-2", "amount": "0.51"}, "cb-2-x1"), 409,
         "insufficient-credit", "amount"),
        (api.hold({"member": "cb-2", "amount": "-1.00"}, "cb-2-x2"), 422, "invalid-amount",
         "amount"),
        (api.hold({"member": "cb-2", "amount": "0.001"}, "cb-2-x3"), 422, "invalid-amount",
         "amount"),
        (api.hold({"member": "cb-2", "amount": 0.5}, "cb-2-x4"), 422, "invalid-amount",
         "amount"),
        (api.hold({"member": "nobody", "amount": "0.10"}, "cb-2-x5"), 404, "unknown-member",
         "member"),
        (api.hold({"member": "cb-2"}, "cb-2-x6"), 422, "invalid-field", "amount"),
        (api.hold({"member": "cb-2", "amount": "0.10", "tip": "1"}, "cb-2-x7"), 422,
         "invalid-field", "tip"),
        (api.hold(["cb-2"], "cb-2-x8"), 422, "invalid-field", "(body)"),
        (api.hold({"member": "cb-2", "amount": "0.20"}, "cb-2-h1"), 409,
         "idempotency-conflict", "Idempotency-Key"),
        (api.pos.post(f"{API}/credit/holds", json={"member": "cb-2", "amount": "0.10"}), 422,
         "invalid-field", "Idempotency-Key"),
        (api.pos.post(f"{API}/credit/holds/crh_missing/capture",
                      headers={"Idempotency-Key": "cb-2-x9"}), 404, "unknown-credit-hold",
         "hold"),
        (api.pos.post(f"{API}/credit/holds/{open_hold['id']}/capture",
                      json={"amount": "0.60"}, headers={"Idempotency-Key": "cb-2-x10"}), 422,
         "invalid-amount", "amount"),
        (api.pos.post(f"{API}/credit/holds/{open_hold['id']}/release",
                      json={"amount": "0.10"}, headers={"Idempotency-Key": "cb-2-x11"}), 422,
         "invalid-field", "amount"),
        (api.reader.post(f"{API}/credit/holds", json={"member": "cb-2", "amount": "0.10"},
                         headers={"Idempotency-Key": "cb-2-x12"}), 403, "forbidden", None),
        (api.reader.get(f"{API}/members/cb-2/credit/statement", params={"period": "2021-Q5"}),
         422, "invalid-field", "period"),
        (api.reader.get(f"{API}/members/cb-2/credit/statement"), 422, "invalid-field",
         "period"),
        (api.reader.get(f"{API}/members/nobody/credit"), 404, "unknown-member", "member"),
    ]
    for response, status, slug, field in refusals:
        assert_problem(response, status, slug, field)
        assert api.snapshot("cb-2") == before
    released = api.pos.post(f"{API}/credit/holds/{open_hold['id']}/release",
                            headers={"Idempotency-Key": "cb-2-r1"})
    assert released.status_code == 200
    assert released.json()["balances"] == {"available": "1.00", "reserved": "0.00"}
    twice = api.pos.post(f"{API}/credit/holds/{open_hold['id']}/capture",
                         headers={"Idempotency-Key": "cb-2-r2"})
    assert_problem(twice, 409, "credit-hold-not-open", "hold")


def test_an_admin_adjusts_store_credit_and_a_pos_key_may_not(api: Api) -> None:
    api.enrol("cb-adj")
    api.buy("cb-adj-e1", "cb-adj", "100.00")  # 1.00 of credit
    url = f"{API}/credit/adjustments"
    before = api.snapshot("cb-adj")
    # a till's key may not correct credit; a bad amount or a take-back past the balance is
    # a problem naming the field; none changes anything
    assert_problem(api.pos.post(url, json={"member": "cb-adj", "amount": "5.00",
                                           "reason": "x"}, headers={"Idempotency-Key": "a-0"}),
                   403, "forbidden", None)
    assert_problem(api.admin.post(url, json={"member": "cb-adj", "amount": "1.001",
                                             "reason": "x"}, headers={"Idempotency-Key": "a-1"}),
                   422, "invalid-amount", "amount")
    assert_problem(api.admin.post(url, json={"member": "cb-adj", "amount": "-1.01",
                                             "reason": "x"}, headers={"Idempotency-Key": "a-2"}),
                   409, "insufficient-credit", "amount")
    assert api.snapshot("cb-adj") == before
    given = api.admin.post(url, json={"member": "cb-adj", "amount": "-0.40",
                                      "reason": "cashback on a voided sale"},
                           headers={"Idempotency-Key": "a-3"})
    assert given.status_code == 201, given.text
    assert given.json() == {"member": "cb-adj", "amount": "-0.40",
                            "reason": "cashback on a voided sale", "ref": "credit-adjust:a-3",
                            "balances": {"available": "0.60", "reserved": "0.00"}}
    assert api.credit("cb-adj")["available"] == "0.60"


def test_tiered_rebate_by_run_due_then_visible_in_the_next_statement(api: Api) -> None:
    api.enrol("cb-3")
    api.buy("cb-3-e1", "cb-3", "800.00", when="2021-02-10T10:00:00+08:00")
    ran = run_setia(api.live.db_url, "run-due", "--as-of", "2021-04-01T00:00:00+08:00",
                    "--program", PROGRAM)
    assert ran.returncode == 0, ran.stderr
    assert "rebates credited" in ran.stdout
    # 8.00 instant + 5.00 + 6.00 rebate
    assert api.credit("cb-3")["available"] == "19.00"
    q2 = api.reader.get(f"{API}/members/cb-3/credit/statement",
                        params={"period": "2021-Q2"}).json()
    assert [(line["code"], line["rule"], line["amount"]) for line in q2["lines"]] == [
        ("rebate", "quarterly", "11.00")]
    shown = run_setia(api.live.db_url, "credit", "statement", "cb-3", "--program", PROGRAM,
                      "--period", "2021-Q2", "--csv")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[2].endswith(",11.00,19.00")
    show = run_setia(api.live.db_url, "credit", "show", "cb-3", "--program", PROGRAM)
    assert show.returncode == 0, show.stderr
    assert json.loads(show.stdout) == {"member": "cb-3", "asset": "credit:MYR",
                                       "currency": "MYR", "available": "19.00",
                                       "reserved": "0.00"}
    nobody = run_setia(api.live.db_url, "credit", "show", "nobody", "--program", PROGRAM)
    assert (nobody.returncode, nobody.stderr.strip()) == (
        1, f"error: no member 'nobody' in programme {PROGRAM} (field member)")
    bad = run_setia(api.live.db_url, "credit", "statement", "cb-3", "--program", PROGRAM,
                    "--period", "Q2")
    assert bad.returncode == 1
    assert bad.stderr.strip().startswith("error: period 'Q2' is not")


def test_partner_events_redemptions_and_settlement_over_http(api: Api) -> None:
    api.enrol("pt-1")
    before = api.snapshot("pt-1")
    unknown = api.pos.post(f"{API}/events", json={
        "id": "pt-1-x", "type": "purchase", "member": "pt-1", "order_id": "ord-pt-1-x",
        "occurred_at": "2021-05-02T10:00:00+08:00", "amount": "10.00", "partner": "bakery"})
    assert_problem(unknown, 422, "unknown-partner", "partner")
    assert api.snapshot("pt-1") == before
    api.buy("pt-1-e1", "pt-1", "300.00", partner="roti", when="2021-05-02T10:00:00+08:00")
    spend = api.pos.post(f"{API}/redemptions", headers={"Idempotency-Key": "pt-1-r1"},
                         json={"member": "pt-1", "points": 120, "partner": "kopi"})
    assert spend.status_code == 201, spend.text
    wrong = api.pos.post(f"{API}/redemptions", headers={"Idempotency-Key": "pt-1-r2"},
                         json={"member": "pt-1", "points": 10, "partner": "bakery"})
    assert_problem(wrong, 422, "unknown-partner", "partner")
    settled = api.admin.get(f"{API}/settlement", params={"period": "2021-05"})
    assert settled.status_code == 200, settled.text
    accounts = {row["account"]: (row["points_issued"], row["points_burned"], row["net"])
                for row in settled.json()["accounts"]}
    # the purchase in May 2021: roti owes 300 points at 0.01
    assert accounts == {"partner:kopi": (0, 0, "0.00"), "partner:roti": (300, 0, "-3.00"),
                        "coalition": (0, 0, "3.00")}
    assert settled.json()["total"] == "0.00"
    # the redemption happened now: kopi is owed the 120 points burned there, in the year
    # (Kuala Lumpur's) of the time the server settled it at, whatever the clock says since
    with api.live.engine.connect() as conn:
        burned_at = conn.execute(sa.select(settlement_postings.c.occurred_at).where(
            settlement_postings.c.ref == spend.json()["id"])).scalar_one()
    this_year = str(burned_at.astimezone(ZoneInfo("Asia/Kuala_Lumpur")).year)
    now = api.admin.get(f"{API}/settlement", params={"period": this_year}).json()
    assert [(row["account"], row["points_burned"], row["position"], row["amount"])
            for row in now["accounts"]] == [
        ("partner:kopi", 120, "is owed", "1.20"), ("partner:roti", 0, "settled", "0.00"),
        ("coalition", 0, "owes", "1.20")]
    assert now["total"] == "0.00"
    assert_problem(api.admin.get(f"{API}/settlement", params={"period": "May"}), 422,
                   "invalid-field", "period")
    assert_problem(api.pos.get(f"{API}/settlement", params={"period": "2021-05"}), 403,
                   "forbidden")
    printed = run_setia(api.live.db_url, "settlement", "--program", PROGRAM, "--period",
                        "2021-05")
    assert printed.returncode == 0, printed.stderr
    lines = printed.stdout.splitlines()
    assert [line.split("│")[1:-1] for line in lines if "partner:roti" in line][0] == [
        " partner:roti ", "           300 ", "             0 ", " owes     ", "   3.00 "]
    assert [line.split() for line in lines if "total" in line] == [["│", "total", "│", "│",
                                                                     "│", "│", "0.00", "│"]]


def test_a_member_token_may_not_name_a_partner_or_any_other_field(api: Api) -> None:
    # Given a member with 300 points and a member token of theirs
    api.enrol("pt-me")
    api.buy("pt-me-e1", "pt-me", "300.00", when="2021-06-02T10:00:00+08:00")
    token = api.admin.post(f"{API}/members/pt-me/tokens").json()["token"]
    # the partners' settlement of the year it is now (Kuala Lumpur) and of the next: a
    # request let through would be settled in one of them, even across New Year
    this_year = datetime.now(ZoneInfo("Asia/Kuala_Lumpur")).year
    years = [str(this_year), str(this_year + 1)]

    def settlements() -> list[Any]:
        return [api.admin.get(f"{API}/settlement", params={"period": year}).json()
                for year in years]

    settlement = settlements()
    before = api.snapshot("pt-me")

    # When the member's own redemption names a partner (where a till burns points), or any
    # other field than reward, points and hold
    with api.live.client(token) as member:
        answers = [(member.post("/v1/me/redemptions", json=body,
                                headers={"Idempotency-Key": f"pt-me-{index}"}), field)
                   for index, (body, field) in enumerate([
                       ({"points": 100, "partner": "kopi"}, "partner"),
                       ({"points": 100, "hold": True, "partner": "roti"}, "partner"),
                       ({"reward": "x", "voucher": "ABC"}, "voucher"),
                       ([{"points": 100}], "(body)")])]

    # Then each is refused naming the field, and no point, credit, posting or partner's
    # settlement changed
    for answer, field in answers:
        assert_problem(answer, 422, "invalid-field", field)
    assert answers[0][0].json()["detail"] == "unknown field 'partner'"
    assert api.snapshot("pt-me") == before
    assert settlements() == settlement
