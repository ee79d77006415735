"""End to end over HTTP on a real ``setia serve``: campaigns, stamp cards and paid
memberships, their bad input (a clear problem, nothing changed) and the operator's CLI.

Programme ``e2e-grow`` (MYR, Asia/Kuala_Lumpur, no pending days): base 1/RM;
campaign ``raya`` x2 on base 10 to 12 March 2021 with a budget of 60; stamp card
``coffee`` (3 coffees, a voucher, restarts); plan ``plus`` (RM 49.00, 12 months,
x1.5, tier floor gold).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.e2e.api_server import (
    LiveServer,
    assert_problem,
    assert_setia_check_ok,
    create_key,
    database_url,
    live_server,
    run_setia,
)

G = "e2e-grow"
API = f"/v1/programs/{G}"
PROGRAMME: dict[str, Any] = {
    "id": G, "name": "E2E Grow", "currency": "MYR", "timezone": "Asia/Kuala_Lumpur",
    "earn": [{"id": "base", "on": "purchase", "rate": 1}],
    "tiers": {"levels": [{"id": "member", "name": "Member", "threshold": 0},
                         {"id": "gold", "name": "Gold", "threshold": 100000,
                          "multiplier": 2}]},
    "campaigns": [{"id": "raya", "name": "Hari Raya", "from": "2021-03-10",
                   "until": "2021-03-12", "multiplier": 2, "budget": 60}],
    "stamp_cards": [{"id": "coffee", "name": "Fourth coffee free", "count": "quantity",
                     "categories": ["coffee"], "target": 3,
                     "reward": {"voucher": {"free_item": "coffee"}}}],
    "memberships": [{"id": "plus", "name": "Plus", "fee": "49.00", "months": 12,
                     "multiplier": "1.5", "tier_floor": "gold"}],
}


class Grow:
    def __init__(self, live: LiveServer, keys: dict[str, str]) -> None:
        self.live = live
        self.admin = live.client(live.admin_key)
        self.clients = {scope: live.client(key) for scope, key in keys.items()}

    def enrol(self, member: str) -> None:
        response = self.admin.put(f"{API}/members/{member}",
                                  json={"enrolled_at": "2021-01-01T09:00:00+08:00"})
        assert response.status_code == 201, response.text

    def buy(self, member: str, order: str, amount: str, when: str,
            lines: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"id": order, "type": "purchase", "member": member,
                                "order_id": order, "occurred_at": when, "amount": amount}
        if lines:
            body["lines"] = lines
        response = self.clients["pos"].post(f"{API}/events", json=body)
        assert response.status_code == 201, response.text
        return response.json()  # type: ignore[no-any-return]

    def snapshot(self, member: str) -> dict[str, Any]:
        with self.live.engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT id, status FROM membership_purchases ORDER BY id")).all()
            vouchers = conn.execute(sa.text("SELECT count(*) FROM vouchers")).scalar_one()
        return {"member": self.admin.get(f"{API}/members/{member}").json(),
                "postings": self.live.postings(), "memberships": [tuple(r) for r in rows],
                "vouchers": vouchers,
                "membership": self.admin.get(f"{API}/members/{member}/membership").json()}


@pytest.fixture(scope="module", params=["sqlite",
                                        pytest.param("postgres", marks=pytest.mark.postgres)])
def grow(request: pytest.FixtureRequest,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Grow]:
    directory = tmp_path_factory.mktemp(f"grow-{request.param}")
    with database_url(request.param, directory, "setia_e2e_grow") as url, \
            live_server(url, directory) as live:
        keys = {scope: create_key(url, scope) for scope in ("pos", "member-read")}
        api = Grow(live, keys)
        assert api.admin.put(API, json=PROGRAMME).status_code == 201
        yield api
        for client in [api.admin, *api.clients.values()]:
            client.close()
        assert_setia_check_ok(url)


def test_a_campaign_over_http_pays_within_its_budget_and_reports_it(grow: Grow) -> None:
    grow.enrol("c1")
    first = grow.buy("c1", "c1-a", "40.00", "2021-03-11T10:00:00+08:00")
    second = grow.buy("c1", "c1-b", "40.00", "2021-03-11T11:00:00+08:00")
    assert [(p["rule"], p["points"]) for p in first["postings"]] == [
        ("base", 40), ("campaign:raya", 40)]
    assert [(p["rule"], p["points"]) for p in second["postings"]] == [
        ("base", 40), ("campaign:raya", 20)]
    report = grow.clients["pos"].get(f"{API}/campaigns/raya")
    assert report.status_code == 200
    body = report.json()
    assert (body["budget_used"], body["budget_left"], body["awards"], body["effect"]) == (
        60, 0, 2, "multiplier")
    listed = grow.admin.get(f"{API}/campaigns").json()["campaigns"]
    assert [c["id"] for c in listed] == ["raya"]
    # Bad input: an unknown campaign; a member-read key may not see campaign reports
    assert_problem(grow.admin.get(f"{API}/campaigns/nope"), 404, "unknown-campaign", "campaign")
    assert_problem(grow.clients["member-read"].get(f"{API}/campaigns"), 403, "forbidden")
    assert_problem(grow.admin.get("/v1/programs/nope/campaigns"), 404, "unknown-programme")


def test_stamp_cards_over_http(grow: Grow) -> None:
    grow.enrol("s1")
    coffee = [{"sku": "KOPI", "category": "coffee", "quantity": 2, "amount": "10.00"}]
    grow.buy("s1", "s1-a", "10.00", "2021-04-01T10:00:00+08:00", coffee)
    grow.buy("s1", "s1-b", "10.00", "2021-04-02T10:00:00+08:00", coffee)
    response = grow.clients["member-read"].get(f"{API}/members/s1/stamp-cards")
    assert response.status_code == 200
    assert response.json() == {"member": "s1", "stamp_cards": [{
        "id": "coffee", "name": "Fourth coffee free", "count": "quantity", "period": "all",
        "target": 3, "stamps": 1, "remaining": 2, "completions": 1, "repeat": True,
        "finished": False}]}
    assert_problem(grow.admin.get(f"{API}/members/ghost/stamp-cards"), 404, "unknown-member",
                   "member")


def test_a_paid_membership_over_http_and_its_bad_input(grow: Grow) -> None:
    grow.enrol("p1")
    pos = grow.clients["pos"]
    url = f"{API}/members/p1/membership"

    def refused(response: httpx.Response, status: int, slug: str, field: str | None) -> None:
        before = grow.snapshot("p1")
        assert_problem(response, status, slug, field)
        assert grow.snapshot("p1") == before

    # No membership yet: renew and cancel are refused, as is an unknown plan
    refused(pos.post(f"{url}/renew", json={}, headers={"Idempotency-Key": "p1-r0"}),
            409, "no-active-membership", "member")
    refused(pos.post(f"{url}/cancel", json={}, headers={"Idempotency-Key": "p1-c0"}),
            409, "no-active-membership", "member")
    refused(pos.post(url, json={"plan": "gold"}, headers={"Idempotency-Key": "p1-b0"}),
            404, "unknown-membership-plan", "plan")
    refused(pos.post(url, json={"plan": "plus", "price": "1"},
                     headers={"Idempotency-Key": "p1-b1"}), 422, "invalid-field", "price")
    refused(pos.post(url, json={"plan": "plus"}), 422, "invalid-field", "Idempotency-Key")
    refused(pos.post(url, content=b"{", headers={"Idempotency-Key": "p1-b2",
                                                 "Content-Type": "application/json"}),
            400, "malformed-request", None)
    refused(pos.post(url, content=b"plan=plus", headers={"Idempotency-Key": "p1-b3",
                                                         "Content-Type": "text/plain"}),
            415, "unsupported-media-type", None)
    refused(grow.clients["member-read"].post(url, json={"plan": "plus"},
                                             headers={"Idempotency-Key": "p1-b4"}),
            403, "forbidden", None)
    refused(pos.post(f"{API}/members/ghost/membership", json={"plan": "plus"},
                     headers={"Idempotency-Key": "p1-b5"}), 404, "unknown-member", "member")

    # Buy: 201, the fee recorded, gold as a floor
    bought = pos.post(url, json={"plan": "plus"}, headers={"Idempotency-Key": "p1-buy"})
    assert bought.status_code == 201, bought.text
    view = bought.json()
    assert (view["status"], view["plan"], view["tier"]) == ("active", "plus", "gold")
    assert [(p["kind"], p["fee"], p["currency"]) for p in view["purchases"]] == [
        ("buy", "49.00", "MYR")]
    again = pos.post(url, json={"plan": "plus"}, headers={"Idempotency-Key": "p1-buy"})
    assert (again.status_code, again.json()) == (201, view)
    refused(pos.post(url, json={"plan": "plus"}, headers={"Idempotency-Key": "p1-buy2"}),
            409, "membership-active", "plan")
    refused(pos.post(url, json={"plan": "other"}, headers={"Idempotency-Key": "p1-buy"}),
            409, "idempotency-conflict", "Idempotency-Key")
    # A purchase now, as Gold (x2) with the x1.5 plan: base 20, membership 10
    now = datetime.now(UTC).isoformat()
    earned = grow.buy("p1", "p1-o1", "10.00", now)
    assert [(p["rule"], p["points"]) for p in earned["postings"]] == [
        ("base", 20), ("membership:plus", 10)]
    # Renew (200, a second fee), then cancel (200, benefits stop, tier back to member)
    renewed = pos.post(f"{url}/renew", headers={"Idempotency-Key": "p1-renew"})
    assert renewed.status_code == 200, renewed.text
    assert [p["kind"] for p in renewed.json()["purchases"]] == ["buy", "renew"]
    cancelled = pos.post(f"{url}/cancel", json={"reason": "e2e"},
                         headers={"Idempotency-Key": "p1-cancel"})
    assert cancelled.status_code == 200, cancelled.text
    assert (cancelled.json()["status"], cancelled.json()["tier"]) == ("none", "member")
    read = grow.clients["member-read"].get(url).json()
    assert [p["status"] for p in read["purchases"]] == ["cancelled", "cancelled"]


def test_the_operator_cli_reports_campaigns_and_a_members_membership(grow: Grow) -> None:
    grow.enrol("cli1")
    db = grow.live.db_url
    report = run_setia(db, "campaigns", "report", "--program", G, "--json")
    assert report.returncode == 0, report.stderr
    assert '"id": "raya"' in report.stdout
    shown = run_setia(db, "membership", "show", "cli1", "--program", G)
    assert shown.returncode == 0, shown.stderr
    assert "membership none" in shown.stdout and "coffee" in shown.stdout
    missing = run_setia(db, "membership", "show", "ghost", "--program", G)
    assert missing.returncode == 1
    assert missing.stderr.strip() == "error: no member 'ghost' in programme e2e-grow (field member)"
    unknown = run_setia(db, "campaigns", "report", "--program", "nope")
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("error: no programme 'nope'")
