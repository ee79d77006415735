"""End to end: Setia's HTTP API on a real ``setia serve`` process, over real sockets.

One server per database kind (a fresh SQLite file; a scratch PostgreSQL
database, marked ``postgres``) serves the whole module; every test uses its own
members, orders, event ids and idempotency keys. After every refused write the
member is read again and the journal rows counted: nothing may have changed.
The module ends with ``setia check`` against the same database.

The programme used throughout, ``e2e-cafe`` (MYR, Asia/Kuala_Lumpur,
pending_days 0 so earned points are spendable at once, no expiry):

- base 1/RM; pastry-bonus 1/RM on pastry lines; app-orders 0.5/RM on channel
  app; kl-bonus 2/RM at store kl-01; weekend 1/RM on sat/sun; first-visit 100
  on the first purchase of at least RM 10.00; welcome 50 on signup; review 5
  (3 a month).
- tiers on spend per calendar year: member 0, gold 350 (x1.25).
- rewards: free-latte 150 (voucher, 30 days); mug 100 (stock 1); cap 100 (one
  per member, no voucher); gold-gift 100 (gold only); future-gift 10 (from
  2099-01-01); past-gift 10 (until 2000-01-01).

Events are dated 2021 (2021-03-01 is a Monday), so the member view's "tier
progress in the current year" is always the full threshold, whatever today is.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from setia.adapters.db import tables
from setia.adapters.db.engine import make_engine
from tests.conftest import KOPI_SETIA, assert_journal_ok
from tests.e2e.api_server import (
    CAFE_PROGRAMME,
    LiveServer,
    assert_problem,
    assert_setia_check_ok,
    create_key,
    database_url,
    live_server,
)

CAFE = "e2e-cafe"
API = f"/v1/programs/{CAFE}"
KOPI = "kopi-setia"
CROCKFORD_CODE = re.compile(r"^[0-9ABCDEFGHJKMNPQRSTVWXYZ]{12}$")

ENROLLED_AT = "2021-03-01T09:00:00+08:00"
MEMBER_TIER = {
    "id": "member",
    "name": "Member",
    "multiplier": "1",
    "next": {"id": "gold", "threshold": "350.00", "metric": "spend", "remaining": "350.00"},
}
# The purchase of the contract's example, at kl-01 through the app on Tuesday 2021-03-02:
# base floor(42.50)=42, pastry-bonus floor(18.50)=18, app-orders floor(0.5*42.50)=21,
# kl-bonus floor(2*42.50)=85, first-visit 100 (first purchase, 42.50 >= 10.00): 266.
EXAMPLE_LINES = [
    {"sku": "LATTE", "category": "coffee", "quantity": 2, "amount": "24.00"},
    {"sku": "CROISSANT", "category": "pastry", "quantity": 1, "amount": "18.50"},
]
EXAMPLE_POSTINGS = [
    {"rule": "base", "points": 42, "explanation": "1 × RM 42.50 = 42 Beans (base)"},
    {"rule": "pastry-bonus", "points": 18, "explanation": "1 × RM 18.50 = 18 Beans (pastry-bonus)"},
    {"rule": "app-orders", "points": 21, "explanation": "0.5 × RM 42.50 = 21 Beans (app-orders)"},
    {"rule": "kl-bonus", "points": 85, "explanation": "2 × RM 42.50 = 85 Beans (kl-bonus)"},
    {"rule": "first-visit", "points": 100, "explanation": "100 Beans (first-visit)"},
]


def balances(available: int, pending: int = 0, reserved: int = 0) -> dict[str, int]:
    return {"available": available, "pending": pending, "reserved": reserved}


def purchase(event_id: str, member: str, amount: str, *, when: str = "2021-03-02T10:00:00+08:00",
             order: str | None = None, **more: Any) -> dict[str, Any]:
    return {"id": event_id, "type": "purchase", "member": member, "occurred_at": when,
            "order_id": order or f"ord-{event_id}", "amount": amount, "currency": "MYR", **more}


def example_purchase(event_id: str, member: str) -> dict[str, Any]:
    return purchase(event_id, member, "42.50", store="kl-01", channel="app",
                    lines=EXAMPLE_LINES, order=f"ord-{event_id}")


@dataclass
class Api:
    """The live server, an admin client (SETIA_ADMIN_KEY) and keys made by ``setia keys``."""

    kind: str
    live: LiveServer
    admin: httpx.Client
    keys: dict[str, str]
    clients: dict[str, httpx.Client] = field(default_factory=dict)

    def as_(self, who: str) -> httpx.Client:
        if who not in self.clients:
            self.clients[who] = self.live.client(self.keys[who])
        return self.clients[who]

    def enrol(self, member: str, **profile: Any) -> dict[str, Any]:
        response = self.admin.put(f"{API}/members/{member}",
                                  json={"enrolled_at": ENROLLED_AT, **profile})
        assert response.status_code == 201, response.text
        return response.json()  # type: ignore[no-any-return]

    def member(self, member: str) -> dict[str, Any]:
        response = self.admin.get(f"{API}/members/{member}")
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    def event(self, body: dict[str, Any], who: str = "pos") -> dict[str, Any]:
        response = self.as_(who).post(f"{API}/events", json=body)
        assert response.status_code == 201, response.text
        return response.json()  # type: ignore[no-any-return]

    def adjust(self, member: str, points: int, key: str) -> dict[str, Any]:
        response = self.admin.post(f"{API}/adjustments", headers={"Idempotency-Key": key},
                                   json={"member": member, "points": points, "reason": "e2e"})
        assert response.status_code == 201, response.text
        return response.json()  # type: ignore[no-any-return]

    def redeem(self, body: dict[str, Any], key: str, who: str = "pos") -> httpx.Response:
        return self.as_(who).post(f"{API}/redemptions", json=body,
                                  headers={"Idempotency-Key": key})

    def stock(self) -> dict[str, int]:
        with self.live.engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT program_id, reward_id, redeemed FROM reward_stock")).all()
        return {f"{row[0]}/{row[1]}": int(row[2]) for row in rows}

    def snapshot(self, *members: str) -> dict[str, Any]:
        """What a refused request must leave as it was."""
        return {
            "members": {m: self.member(m) for m in members},
            "postings": self.live.postings(),
            "stock": self.stock(),
        }


KINDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(scope="module", params=KINDS)
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    directory = tmp_path_factory.mktemp(f"api-{request.param}")
    with database_url(request.param, directory, "setia_e2e_api") as url, \
            live_server(url, directory) as live:
        admin = live.client(live.admin_key)
        assert admin.put(f"/v1/programs/{CAFE}", json=CAFE_PROGRAMME).status_code == 201
        stored = admin.put(f"/v1/programs/{KOPI}", content=KOPI_SETIA.read_bytes(),
                           headers={"Content-Type": "application/yaml"})
        assert stored.status_code == 201, stored.text
        keys = {
            "admin": create_key(url, "admin"),
            "pos": create_key(url, "pos"),
            "member-read": create_key(url, "member-read"),
            "pos-kopi-only": create_key(url, "pos", KOPI),
        }
        api = Api(request.param, live, admin, keys)
        yield api
        for client in [admin, *api.clients.values()]:
            client.close()
        # Every flow of the module leaves a journal that `setia check` accepts.
        assert_setia_check_ok(url)


@pytest.fixture
def engine(api: Api) -> Iterator[sa.Engine]:
    built = make_engine(api.live.db_url)
    yield built
    built.dispose()


# --------------------------------------------------------------------------- operations


def test_health_ready_openapi_and_docs_answer_without_a_key(api: Api) -> None:
    with api.live.client() as anonymous:
        assert anonymous.get("/health").json() == {"status": "ok"}
        ready = anonymous.get("/ready")
        assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
        schema = anonymous.get("/openapi.json").json()
        assert schema["openapi"].startswith("3.")
        assert "/v1/programs/{program}/redemptions/{redemption}/capture" in schema["paths"]
        # a new programme version answers 201, an unchanged one 200: both are described
        put = schema["paths"]["/v1/programs/{program}"]["put"]["responses"]
        assert {"200", "201"} <= set(put)
        docs = anonymous.get("/docs")
        assert docs.status_code == 200
        assert docs.headers["content-type"].startswith("text/html")


# --------------------------------------------------------------------------- programmes


def test_programme_put_stores_a_version_only_when_it_changed(api: Api, engine: sa.Engine) -> None:
    path = "/v1/programs/e2e-versions"
    first = {"id": "e2e-versions", "name": "Version one", "currency": "MYR"}

    created = api.admin.put(path, json=first)
    unchanged = api.admin.put(path, json=first)
    changed = api.admin.put(path, content=b"id: e2e-versions\nname: Version two\ncurrency: MYR\n",
                            headers={"Content-Type": "application/yaml"})

    assert (created.status_code, created.json()) == (
        201, {"id": "e2e-versions", "version": 1, "created": True})
    assert (unchanged.status_code, unchanged.json()) == (
        200, {"id": "e2e-versions", "version": 1, "created": False})
    assert (changed.status_code, changed.json()) == (
        201, {"id": "e2e-versions", "version": 2, "created": True})
    for who in ("admin", "pos", "member-read"):
        shown = api.as_(who).get(path)
        assert shown.status_code == 200
        assert shown.json()["id"] == "e2e-versions"
        assert shown.json()["version"] == 2
        assert shown.json()["definition"]["name"] == "Version two"
        assert shown.json()["definition"]["currency"] == "MYR"
    assert_journal_ok(engine)


@pytest.mark.parametrize(("text", "where"), [
    (b"id: e2e-bad-yaml\nname: A\ncurrency: MYR\nname: B\n", "programme:line 4, column 1"),
    (b"id: e2e-bad-yaml\nname: A\ncurrency: MYR\ncampaigns:\n  - id: cny\n"
     b"    from: 2027-02-30\n", "programme:line 6, column 11"),
], ids=["duplicate-key", "impossible-date"])
def test_a_programme_yaml_cannot_read_is_a_422_naming_the_place(
        api: Api, text: bytes, where: str) -> None:
    response = api.admin.put("/v1/programs/e2e-bad-yaml", content=text,
                             headers={"Content-Type": "application/yaml"})
    body = assert_problem(response, 422, "invalid-programme")
    assert [error["field"] for error in body["errors"]] == [where]
    assert api.admin.get("/v1/programs/e2e-bad-yaml").status_code == 404


def test_a_programme_in_json_naming_a_key_twice_is_refused_as_in_yaml(api: Api) -> None:
    # (JSON parsers keep the last: the first earn's rules would be dropped silently)
    text = (b'{"id": "e2e-dup-json", "name": "A", "currency": "MYR",\n'
            b' "earn": [{"id": "base", "on": "purchase", "rate": 1}],\n'
            b' "earn": []}')
    response = api.admin.put("/v1/programs/e2e-dup-json", content=text,
                             headers={"Content-Type": "application/json"})
    body = assert_problem(response, 422, "invalid-programme")
    assert body["errors"] == [{"field": "programme:line 3, column 2",
                               "reason": "not valid YAML or JSON: found the key 'earn' twice "
                                         "in one mapping"}]
    assert api.admin.get("/v1/programs/e2e-dup-json").status_code == 404
    # and YAML's merge keys still read: a rule made from another, its id given again
    merged = (b"id: e2e-merge\nname: M\ncurrency: MYR\nearn:\n"
              b"  - &base {id: base, on: purchase, rate: 1}\n"
              b"  - {<<: *base, id: double, rate: 2}\n")
    stored = api.admin.put("/v1/programs/e2e-merge", content=merged,
                           headers={"Content-Type": "application/yaml"})
    assert stored.status_code == 201, stored.text
    rules = api.admin.get("/v1/programs/e2e-merge").json()["definition"]["earn"]
    assert [(r["id"], r["on"], r["rate"]) for r in rules] == [("base", "purchase", "1"),
                                                              ("double", "purchase", "2")]


def test_a_programme_whose_id_differs_from_the_path_is_refused(api: Api) -> None:
    response = api.admin.put("/v1/programs/e2e-elsewhere",
                             json={"id": "e2e-versions-x", "name": "X", "currency": "MYR"})

    assert_problem(response, 422, "invalid-field", "id")
    assert_problem(api.admin.get("/v1/programs/e2e-elsewhere"), 404, "unknown-programme",
                   "program")
    assert_problem(api.admin.get("/v1/programs/e2e-versions-x"), 404, "unknown-programme",
                   "program")


def test_an_invalid_programme_is_refused_with_every_error_and_its_path(api: Api) -> None:
    document = {
        "id": "Bad Id",
        "name": "Broken",
        "currency": "myr",
        "tiers": {"levels": [{"id": "member", "name": "Member", "threshold": 0},
                             {"id": "gold", "name": "Gold", "threshold": -5}]},
    }

    response = api.admin.put("/v1/programs/e2e-broken", json=document)

    problem = assert_problem(response, 422, "invalid-programme", "id")
    assert [error["field"] for error in problem["errors"]] == [
        "id", "currency", "tiers.levels[1].threshold"]
    assert all(error["reason"] for error in problem["errors"])
    assert_problem(api.admin.get("/v1/programs/e2e-broken"), 404, "unknown-programme")


def test_a_programme_that_is_not_yaml_is_refused_as_an_invalid_programme(api: Api) -> None:
    response = api.admin.put("/v1/programs/e2e-broken", content=b"id: [unclosed\n",
                             headers={"Content-Type": "application/yaml"})

    problem = assert_problem(response, 422, "invalid-programme")
    assert len(problem["errors"]) == 1
    assert problem["errors"][0]["field"].startswith("programme:line ")
    assert_problem(api.admin.get("/v1/programs/e2e-broken"), 404, "unknown-programme")


# --------------------------------------------------------------------------- members


def test_enrolment_posts_the_welcome_and_an_update_keeps_balances(
    api: Api, engine: sa.Engine
) -> None:
    before = api.live.postings()

    enrolled = api.as_("pos").put(f"{API}/members/enrol-ali", json={
        "name": "Ali", "email": "ali@example.com", "phone": "+60 12-345 6789",
        "birthday": "1990-05-17", "attributes": {"city": "KL"}, "enrolled_at": ENROLLED_AT})
    updated = api.as_("pos").put(f"{API}/members/enrol-ali",
                                 json={"name": "Ali Baba", "enrolled_at": "2022-01-01T00:00:00Z"})
    shown = api.as_("member-read").get(f"{API}/members/enrol-ali")
    activity = api.as_("member-read").get(f"{API}/members/enrol-ali/activity").json()

    # welcome 50, spendable at once (pending_days 0); 09:00+08:00 is 01:00 UTC
    expected = {
        "id": "enrol-ali", "name": "Ali", "email": "ali@example.com",
        "phone": "+60 12-345 6789", "birthday": "1990-05-17", "attributes": {"city": "KL"},
        "enrolled_at": "2021-03-01T01:00:00+00:00", "tier": MEMBER_TIER,
        "balances": balances(50), "expiring": [],
    }
    assert (enrolled.status_code, enrolled.json()) == (201, expected)
    # an update changes the profile only: enrolled_at stays, no second welcome
    assert (updated.status_code, updated.json()) == (200, {**expected, "name": "Ali Baba"})
    assert (shown.status_code, shown.json()) == (200, {**expected, "name": "Ali Baba"})
    assert api.live.postings() == before + 1
    assert activity["next_cursor"] is None
    [welcome] = activity["data"]
    assert {k: welcome[k] for k in ("code", "rule", "points", "ref", "balance_after")} == {
        "code": "earn", "rule": "welcome", "points": 50, "ref": "signup:enrol-ali",
        "balance_after": 50}
    assert_journal_ok(engine)


@pytest.mark.parametrize(
    ("body", "field_name"),
    [
        ({"email": "not-an-email"}, "email"),
        ({"phone": "call me"}, "phone"),
        ({"birthday": "17/05/1990"}, "birthday"),
        ({"nickname": "Al"}, "nickname"),
        ({"attributes": ["city"]}, "attributes"),
        ({"name": 42}, "name"),
    ],
)
def test_a_bad_profile_is_refused_and_changes_nothing(
    api: Api, body: dict[str, Any], field_name: str
) -> None:
    if api.admin.get(f"{API}/members/prof-bea").status_code == 404:
        api.enrol("prof-bea", name="Bea")
    before = api.snapshot("prof-bea")

    updated = api.admin.put(f"{API}/members/prof-bea", json=body)
    created = api.admin.put(f"{API}/members/prof-new", json=body)

    assert_problem(updated, 422, "invalid-field", field_name)
    assert_problem(created, 422, "invalid-field", field_name)
    assert api.snapshot("prof-bea") == before
    assert_problem(api.admin.get(f"{API}/members/prof-new"), 404, "unknown-member", "member")


def test_a_member_id_with_a_space_is_refused_and_enrols_nobody(api: Api) -> None:
    before = api.live.postings()

    response = api.admin.put(f"{API}/members/bad%20id", json={"name": "Nobody"})

    assert_problem(response, 422, "invalid-field", "member")
    assert api.live.postings() == before
    assert_problem(api.admin.get(f"{API}/members/bad%20id"), 404, "unknown-member")


def test_members_of_an_unknown_programme_are_refused(api: Api) -> None:
    before = api.live.postings()

    put = api.admin.put("/v1/programs/e2e-nope/members/ali", json={"name": "Ali"})
    got = api.admin.get("/v1/programs/e2e-nope/members/ali")
    activity = api.admin.get("/v1/programs/e2e-nope/members/ali/activity")

    for response in (put, got, activity):
        assert_problem(response, 404, "unknown-programme", "program")
    assert api.live.postings() == before


# --------------------------------------------------------------------------- events


def test_a_purchase_earns_every_matching_rule_and_a_replay_changes_nothing(
    api: Api, engine: sa.Engine
) -> None:
    api.enrol("buy-ali")
    before = api.live.postings()
    body = example_purchase("buy-1", "buy-ali")

    applied = api.as_("pos").post(f"{API}/events", json=body)
    after_first = api.live.postings()
    replayed = api.as_("pos").post(f"{API}/events", json=body)

    # 50 welcome + 266 (module docstring) = 316
    expected = {"event": "buy-1", "status": "applied", "points": 266,
                "postings": EXAMPLE_POSTINGS, "balances": balances(316),
                "tier": {"id": "member", "name": "Member", "multiplier": "1"}}
    assert (applied.status_code, applied.json()) == (201, expected)
    assert (replayed.status_code, replayed.json()) == (200, {**expected, "status": "replayed"})
    assert after_first == before + 5
    assert api.live.postings() == after_first
    assert api.member("buy-ali")["balances"] == balances(316)
    assert_journal_ok(engine)


def test_refunds_by_line_then_by_amount_claw_back_what_the_rest_no_longer_earns(
    api: Api, engine: sa.Engine
) -> None:
    api.enrol("refund-ali")
    api.event(example_purchase("refund-buy", "refund-ali"))  # 50 + 266 = 316

    by_line = api.event({"id": "refund-1", "type": "refund", "member": "refund-ali",
                         "occurred_at": "2021-03-03T10:00:00+08:00", "order_id": "ord-refund-buy",
                         "lines": [{"sku": "CROISSANT", "amount": "18.50"}]})
    by_amount = api.event({"id": "refund-2", "type": "refund", "member": "refund-ali",
                           "occurred_at": "2021-03-04T10:00:00+08:00",
                           "order_id": "ord-refund-buy", "amount": "24.00"})

    # 24.00 left: base 24 (-18), pastry-bonus 0 (-18), app-orders floor(12.00)=12 (-9),
    # kl-bonus 48 (-37), first-visit kept (24.00 >= 10.00): -82, 316 - 82 = 234.
    assert by_line["points"] == -82
    assert by_line["postings"] == [
        {"rule": "app-orders", "points": -9,
         "explanation": "refund of 18.50 on order ord-refund-buy: app-orders now gives 12 "
                        "instead of 21"},
        {"rule": "base", "points": -18,
         "explanation": "refund of 18.50 on order ord-refund-buy: base now gives 24 instead of 42"},
        {"rule": "kl-bonus", "points": -37,
         "explanation": "refund of 18.50 on order ord-refund-buy: kl-bonus now gives 48 "
                        "instead of 85"},
        {"rule": "pastry-bonus", "points": -18,
         "explanation": "refund of 18.50 on order ord-refund-buy: pastry-bonus now gives 0 "
                        "instead of 18"},
    ]
    assert by_line["balances"] == balances(234)
    # nothing left: base -24, app-orders -12, kl-bonus -48, and first-visit's min_amount no
    # longer holds, so its 100 go back whole: -184, 234 - 184 = 50 (the welcome).
    assert by_amount["points"] == -184
    assert [(p["rule"], p["points"]) for p in by_amount["postings"]] == [
        ("app-orders", -12), ("base", -24), ("first-visit", -100), ("kl-bonus", -48)]
    assert api.member("refund-ali")["balances"] == balances(50)

    before = api.snapshot("refund-ali")
    more = api.as_("pos").post(f"{API}/events", json={
        "id": "refund-3", "type": "refund", "member": "refund-ali",
        "occurred_at": "2021-03-05T10:00:00+08:00", "order_id": "ord-refund-buy",
        "amount": "0.01"})
    more_of_a_line = api.as_("pos").post(f"{API}/events", json={
        "id": "refund-4", "type": "refund", "member": "refund-ali",
        "occurred_at": "2021-03-05T10:00:00+08:00", "order_id": "ord-refund-buy",
        "lines": [{"sku": "LATTE", "amount": "0.01"}]})

    assert_problem(more, 422, "refund-exceeds-order", "amount")
    assert_problem(more_of_a_line, 422, "refund-exceeds-order", "lines[0].amount")
    assert api.snapshot("refund-ali") == before
    assert_journal_ok(engine)


@pytest.fixture(scope="module")
def victim(api: Api) -> str:
    """A member with one purchase (order ord-victim-1, event victim-1): 50 + 266 = 316."""
    api.enrol("victim")
    api.event(example_purchase("victim-1", "victim"))
    api.enrol("bystander")
    return "victim"


BAD_EVENTS: list[tuple[str, dict[str, Any], int, str, str]] = [
    # (case, body changes to a fresh valid purchase of the victim, status, slug, field)
    ("member missing", {"member": None}, 422, "invalid-field", "member"),
    ("unknown field", {"colour": "red"}, 422, "invalid-field", "colour"),
    ("type missing", {"type": None}, 422, "invalid-field", "type"),
    ("order missing", {"order_id": None}, 422, "invalid-field", "order_id"),
    ("amount or lines missing", {"amount": None}, 422, "invalid-field", "amount"),
    ("amount unlike its lines", {"amount": "40.00", "lines": EXAMPLE_LINES}, 422,
     "invalid-field", "amount"),
    ("order already recorded", {"order_id": "ord-victim-1"}, 422, "invalid-field", "order_id"),
    ("negative amount", {"amount": "-5.00"}, 422, "invalid-amount", "amount"),
    ("too precise", {"amount": "1.234"}, 422, "invalid-amount", "amount"),
    ("not a number", {"amount": "abc"}, 422, "invalid-amount", "amount"),
    ("a JSON float", {"amount": 12.5}, 422, "invalid-amount", "amount"),
    ("bad line amount", {"amount": None, "lines": [
        {"sku": "A", "amount": "1.00"}, {"sku": "B", "amount": "x"}]},
     422, "invalid-amount", "lines[1].amount"),
    ("bad line quantity", {"amount": None, "lines": [{"sku": "A", "amount": "1.00",
                                                      "quantity": 0}]},
     422, "invalid-field", "lines[0].quantity"),
    ("other currency", {"currency": "USD"}, 422, "currency-mismatch", "currency"),
    ("no offset", {"occurred_at": "2021-03-02T10:00:00"}, 422, "invalid-time", "occurred_at"),
    ("not a time", {"occurred_at": "yesterday"}, 422, "invalid-time", "occurred_at"),
    ("year 1", {"occurred_at": "0001-01-01T00:00:00+14:00"}, 422, "invalid-time",
     "occurred_at"),
    ("no time", {"occurred_at": None}, 422, "invalid-time", "occurred_at"),
    ("same sku twice", {"amount": None, "lines": [
        {"sku": "LATTE", "amount": "1.00"}, {"sku": "LATTE", "amount": "2.00"}]},
     422, "duplicate-line-sku", "lines[1].sku"),
    ("unknown member", {"member": "ghost"}, 404, "unknown-member", "member"),
    ("event id reused for another event", {"id": "victim-1", "amount": "1.00"}, 409,
     "idempotency-conflict", "id"),
    ("refund of an unknown order", {"type": "refund", "order_id": "ord-nope"}, 404,
     "unknown-order", "order_id"),
    ("refund of another member's order", {"type": "refund", "member": "bystander",
                                          "order_id": "ord-victim-1"},
     404, "unknown-order", "order_id"),
    ("refund larger than the order", {"type": "refund", "order_id": "ord-victim-1",
                                      "amount": "42.51"},
     422, "refund-exceeds-order", "amount"),
    ("refund of a line larger than it", {"type": "refund", "order_id": "ord-victim-1",
                                         "amount": None,
                                         "lines": [{"sku": "LATTE", "amount": "24.01"}]},
     422, "refund-exceeds-order", "lines[0].amount"),
]


@pytest.mark.parametrize(("case", "changes", "status", "slug", "field_name"), BAD_EVENTS,
                         ids=[case[0] for case in BAD_EVENTS])
def test_a_bad_event_is_refused_with_its_problem_and_changes_nothing(
    api: Api, victim: str, case: str, changes: dict[str, Any], status: int, slug: str,
    field_name: str,
) -> None:
    body = {**purchase(f"bad-{case.replace(' ', '-')}", victim, "10.00"), **changes}
    body = {key: value for key, value in body.items() if value is not None}
    before = api.snapshot(victim, "bystander")

    answered = api.as_("pos").post(f"{API}/events", json=body)
    simulated = api.as_("pos").post(f"{API}/simulate", json=body)

    assert_problem(answered, status, slug, field_name)
    assert_problem(simulated, status, slug, field_name)
    assert api.snapshot(victim, "bystander") == before


@pytest.mark.parametrize("path", ["events", "simulate"])
def test_an_event_that_is_not_an_object_is_refused(api: Api, victim: str, path: str) -> None:
    before = api.snapshot(victim)

    response = api.as_("pos").post(f"{API}/{path}", json=["not", "an", "event"])

    assert_problem(response, 422, "invalid-field", "(body)")
    assert api.snapshot(victim) == before


def test_an_event_for_an_unknown_programme_is_refused(api: Api, victim: str) -> None:
    before = api.snapshot(victim)

    answered = api.admin.post("/v1/programs/e2e-nope/events",
                              json=purchase("nope-1", victim, "10.00"))
    simulated = api.admin.post("/v1/programs/e2e-nope/simulate",
                               json=purchase("nope-1", victim, "10.00"))
    batch = api.admin.post("/v1/programs/e2e-nope/events/batch",
                           json={"events": [purchase("nope-1", victim, "10.00")]})

    for response in (answered, simulated, batch):
        assert_problem(response, 404, "unknown-programme", "program")
    assert api.snapshot(victim) == before


def test_reviews_earn_up_to_their_monthly_limit(api: Api, engine: sa.Engine) -> None:
    api.enrol("review-ali")
    reviews = [{"id": f"review-{i}", "type": "review", "member": "review-ali",
                "occurred_at": f"2021-03-{10 + i}T10:00:00+08:00"} for i in range(4)]

    results = [api.event(body) for body in reviews]

    # 5 each for the first three in March; the fourth is over the limit: 0
    assert [r["points"] for r in results] == [5, 5, 5, 0]
    assert results[3]["postings"] == []
    assert api.member("review-ali")["balances"] == balances(50 + 15)
    assert_journal_ok(engine)


# --------------------------------------------------------------------------- batch


def test_a_batch_answers_per_event_and_one_bad_event_does_not_stop_the_rest(
    api: Api, engine: sa.Engine
) -> None:
    api.enrol("batch-ali")
    first = purchase("batch-1", "batch-ali", "10.00")  # base 10 + first-visit 100 = 110
    events = [
        first,
        purchase("batch-2", "batch-ali", "-1.00"),
        purchase("batch-3", "batch-ali", "5.00", lines=[{"sku": "BUN", "category": "pastry",
                                                           "amount": "5.00"}]),  # 5 + 5 = 10
        first,  # a repeat within the batch replays
        purchase("batch-4", "ghost", "5.00"),
        {"id": "batch-5", "type": "review", "member": "batch-ali",
         "occurred_at": "2021-03-02T11:00:00+08:00"},  # 5
        "not an event",
        {**first, "amount": "11.00"},  # same id, another body
    ]
    before = api.live.postings()

    response = api.as_("pos").post(f"{API}/events/batch", json={"events": events})

    assert response.status_code == 200
    results = response.json()["results"]
    assert [(r["event"], r["status"]) for r in results] == [
        ("batch-1", "applied"), ("batch-2", "rejected"), ("batch-3", "applied"),
        ("batch-1", "replayed"), ("batch-4", "rejected"), ("batch-5", "applied"),
        (None, "rejected"), ("batch-1", "rejected")]
    assert [r.get("points") for r in results] == [110, None, 10, 110, None, 5, None, None]
    problems = {i: r["problem"] for i, r in enumerate(results) if r["status"] == "rejected"}
    assert {i: (p["type"].rsplit("/", 1)[1], p["status"], p["field"])
            for i, p in problems.items()} == {
        1: ("invalid-amount", 422, "events[1].amount"),
        4: ("unknown-member", 404, "events[4].member"),
        6: ("invalid-field", 422, "events[6].(body)"),
        7: ("idempotency-conflict", 409, "events[7].id"),
    }
    assert results[5]["balances"] == balances(50 + 110 + 10 + 5)
    # base + first-visit, base + pastry-bonus, review
    assert api.live.postings() == before + 5
    assert api.member("batch-ali")["balances"] == balances(175)
    replay = api.as_("pos").post(f"{API}/events", json=first)
    assert (replay.status_code, replay.json()["points"]) == (200, 110)
    assert_journal_ok(engine)


@pytest.mark.parametrize(
    "body",
    [{"events": []}, {"events": {"id": "x"}}, {"items": []}, {"events": [], "more": 1}, [],
     {"events": [{"id": "e"}] * 1001}],
    ids=["empty", "not a list", "no events key", "extra key", "a list", "over 1000"],
)
def test_a_malformed_batch_is_refused_whole(api: Api, body: Any) -> None:
    before = api.live.postings()

    response = api.as_("pos").post(f"{API}/events/batch", json=body)

    assert_problem(response, 422, "invalid-field", "events")
    assert api.live.postings() == before


# --------------------------------------------------------------------------- simulate


def random_purchase(rng: random.Random, index: int, member: str) -> dict[str, Any]:
    catalogue = [("LATTE", "coffee"), ("KOPI", "coffee"), ("CROISSANT", "pastry"),
                 ("MUFFIN", "pastry"), ("MUG", "merch"), ("BEANS-1KG", None)]
    day = datetime(2021, 3, 1) + timedelta(days=rng.randrange(300), hours=rng.randrange(8, 22))
    body: dict[str, Any] = {
        "id": f"sim-{index}", "type": "purchase", "member": member,
        "occurred_at": day.isoformat() + "+08:00", "order_id": f"ord-sim-{index}"}
    if rng.random() < 0.25:
        body["amount"] = f"{Decimal(rng.randrange(1, 9000)) / 100:.2f}"
    else:
        lines = []
        for sku, category in rng.sample(catalogue, rng.randrange(1, 4)):
            amount = Decimal(rng.randrange(50, 4000)) / 100
            line: dict[str, Any] = {"sku": sku, "amount": f"{amount:.2f}",
                                    "quantity": rng.randrange(1, 4)}
            if category:
                line["category"] = category
            lines.append(line)
        body["lines"] = lines
        if rng.random() < 0.5:
            body["amount"] = str(sum(Decimal(line["amount"]) for line in lines))
    for key, choices in (("store", ["kl-01", "pg-02"]), ("channel", ["pos", "app", "web"])):
        if rng.random() < 0.7:
            body[key] = rng.choice(choices)
    if rng.random() < 0.5:
        body["currency"] = "MYR"
    return body


def test_simulate_answers_what_the_event_then_earns_and_writes_nothing(
    api: Api, engine: sa.Engine
) -> None:
    rng = random.Random(20270301)
    members = ["sim-a", "sim-b", "sim-c"]
    for member in members:
        api.enrol(member)
    earned = dict.fromkeys(members, 0)

    for index in range(30):
        member = rng.choice(members)
        body = random_purchase(rng, index, member)
        before = api.snapshot(member)

        simulated = api.as_("pos").post(f"{API}/simulate", json=body)
        after_simulation = api.snapshot(member)
        applied = api.as_("pos").post(f"{API}/events", json=body)

        assert simulated.status_code == 200, simulated.text
        assert applied.status_code == 201, applied.text
        assert after_simulation == before, body
        sim, real = simulated.json(), applied.json()
        assert (sim["status"], real["status"]) == ("simulated", "applied")
        assert sim["event"] == real["event"] == body["id"]
        assert sim["points"] == real["points"], body
        assert sim["postings"] == real["postings"], body
        assert sim["balances"] == real["balances"], body
        assert sim["tier"] == real["tier"], body
        assert api.live.postings() == before["postings"] + len(real["postings"])
        earned[member] += real["points"]
        if index == 0:
            first_body, first_result = body, real

    for member in members:
        assert api.member(member)["balances"] == balances(50 + earned[member])
    # a simulation of an event already applied answers its stored result, writing nothing
    before = api.live.postings()
    again = api.as_("pos").post(f"{API}/simulate", json=first_body)
    assert (again.status_code, again.json()) == (200, {**first_result, "status": "simulated"})
    assert api.live.postings() == before
    assert_journal_ok(engine)


# --------------------------------------------------------------------------- activity


def test_activity_is_newest_first_and_the_cursor_walks_every_line_once(
    api: Api, engine: sa.Engine
) -> None:
    api.enrol("walk-ali")  # 1 line: welcome 50
    # weekdays Tue 2021-03-02 .. Fri 03-05 and Mon 03-08: base 5 each (under first-visit's
    # 10.00), one line each
    for number, date in enumerate(["02", "03", "04", "05", "08"], start=1):
        api.event(purchase(f"walk-{number}", "walk-ali", "5.00",
                           when=f"2021-03-{date}T10:00:00+08:00"))
    api.event({"id": "walk-review", "type": "review", "member": "walk-ali",
               "occurred_at": "2021-03-09T10:00:00+08:00"})  # 1 line: 5
    # 7 lines: 50, 5, 5, 5, 5, 5, 5 -> balance 80

    whole = api.as_("member-read").get(f"{API}/members/walk-ali/activity",
                                       params={"limit": 200}).json()
    pages, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = api.as_("member-read").get(f"{API}/members/walk-ali/activity", params=params)
        assert page.status_code == 200
        pages.append(page.json()["data"])
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break

    assert whole["next_cursor"] is None
    assert [len(page) for page in pages] == [2, 2, 2, 1]
    walked = [line for page in pages for line in page]
    assert walked == whole["data"]
    ids = [line["id"] for line in walked]
    assert ids == sorted(ids, reverse=True)
    assert len(set(ids)) == 7
    assert [line["points"] for line in walked] == [5, 5, 5, 5, 5, 5, 50]
    assert [line["balance_after"] for line in walked] == [80, 75, 70, 65, 60, 55, 50]
    assert [line["ref"] for line in walked] == [
        "walk-review", "walk-5", "walk-4", "walk-3", "walk-2", "walk-1", "signup:walk-ali"]
    assert [line["rule"] for line in walked] == ["review"] + ["base"] * 5 + ["welcome"]
    assert walked[1]["explanation"] == "1 × RM 5.00 = 5 Beans (base)"
    assert_journal_ok(engine)


@pytest.mark.parametrize(
    ("params", "status", "slug", "field_name"),
    [
        ({"cursor": "not-a-cursor"}, 422, "invalid-field", "cursor"),
        ({"limit": 0}, 422, "invalid-field", "limit"),
        ({"limit": 201}, 422, "invalid-field", "limit"),
        ({"limit": "many"}, 422, "invalid-field", "limit"),
    ],
)
def test_bad_activity_queries_are_refused(
    api: Api, victim: str, params: dict[str, Any], status: int, slug: str, field_name: str
) -> None:
    response = api.admin.get(f"{API}/members/{victim}/activity", params=params)

    assert_problem(response, status, slug, field_name)


def test_activity_of_an_unknown_member_is_refused(api: Api) -> None:
    response = api.admin.get(f"{API}/members/ghost/activity")

    assert_problem(response, 404, "unknown-member", "member")


# --------------------------------------------------------------------------- redemptions


def test_a_reward_redemption_answers_a_voucher_and_a_replay_answers_it_again(
    api: Api, engine: sa.Engine
) -> None:
    api.enrol("rdm-ali")
    api.adjust("rdm-ali", 500, "rdm-ali-topup")  # 50 + 500 = 550
    body = {"member": "rdm-ali", "reward": "free-latte"}

    first = api.redeem(body, "rdm-1")
    after_first = api.snapshot("rdm-ali")
    again = api.redeem(body, "rdm-1")

    assert first.status_code == 201
    redemption = first.json()
    assert redemption["id"].startswith("rdm_")
    assert {k: v for k, v in redemption.items() if k not in ("id", "voucher")} == {
        "status": "captured", "member": "rdm-ali", "reward": "free-latte", "points": 150,
        "balances": balances(400)}
    assert CROCKFORD_CODE.match(redemption["voucher"]["code"])
    assert (again.status_code, again.json()) == (201, redemption)
    assert api.snapshot("rdm-ali") == after_first

    conflict = api.redeem({"member": "rdm-ali", "reward": "cap"}, "rdm-1")

    problem = assert_problem(conflict, 409, "idempotency-conflict", "Idempotency-Key")
    assert "rdm-1" in problem["detail"]
    assert api.snapshot("rdm-ali") == after_first
    assert_journal_ok(engine)


def test_points_as_payment_and_holds_captured_or_released(api: Api, engine: sa.Engine) -> None:
    api.enrol("hold-ali")
    api.adjust("hold-ali", 500, "hold-ali-topup")  # 550

    paid = api.redeem({"member": "hold-ali", "points": 30}, "hold-pay")
    held = api.redeem({"member": "hold-ali", "points": 100, "hold": True}, "hold-1")
    hold_id = held.json()["id"]
    captured = api.as_("pos").post(f"{API}/redemptions/{hold_id}/capture",
                                   headers={"Idempotency-Key": "hold-1-capture"})
    captured_again = api.as_("pos").post(f"{API}/redemptions/{hold_id}/capture",
                                         headers={"Idempotency-Key": "hold-1-capture"})
    released_hold = api.redeem({"member": "hold-ali", "points": 20, "hold": True}, "hold-2")
    released = api.as_("pos").post(f"{API}/redemptions/{released_hold.json()['id']}/release",
                                   headers={"Idempotency-Key": "hold-2-release"})
    reward_hold = api.redeem({"member": "hold-ali", "reward": "free-latte", "hold": True},
                             "hold-3")
    reward_captured = api.admin.post(f"{API}/redemptions/{reward_hold.json()['id']}/capture",
                                     headers={"Idempotency-Key": "hold-3-capture"})

    assert (paid.status_code, {k: v for k, v in paid.json().items() if k != "id"}) == (201, {
        "status": "captured", "member": "hold-ali", "reward": None, "points": 30,
        "voucher": None, "balances": balances(520)})
    assert (held.status_code, held.json()["status"], held.json()["balances"]) == (
        201, "held", balances(420, reserved=100))
    assert (captured.status_code, captured.json()) == (200, {
        "id": hold_id, "status": "captured", "member": "hold-ali", "reward": None,
        "points": 100, "voucher": None, "balances": balances(420)})
    assert (captured_again.status_code, captured_again.json()) == (200, captured.json())
    assert released_hold.json()["balances"] == balances(400, reserved=20)
    assert (released.status_code, released.json()["status"], released.json()["balances"]) == (
        200, "released", balances(420))
    assert (reward_hold.json()["status"], reward_hold.json()["voucher"]) == ("held", None)
    assert reward_hold.json()["balances"] == balances(270, reserved=150)
    assert reward_captured.status_code == 200
    assert reward_captured.json()["status"] == "captured"
    assert CROCKFORD_CODE.match(reward_captured.json()["voucher"]["code"])
    assert reward_captured.json()["balances"] == balances(270)
    assert api.member("hold-ali")["balances"] == balances(270)

    before = api.snapshot("hold-ali")
    for action, redemption, key in [("capture", hold_id, "hold-late-1"),
                                    ("release", hold_id, "hold-late-2"),
                                    ("capture", released_hold.json()["id"], "hold-late-3")]:
        late = api.as_("pos").post(f"{API}/redemptions/{redemption}/{action}",
                                   headers={"Idempotency-Key": key})
        assert_problem(late, 409, "redemption-not-held", "id")
    for action in ("capture", "release"):
        unknown = api.as_("pos").post(f"{API}/redemptions/rdm_nope/{action}",
                                      headers={"Idempotency-Key": f"hold-unknown-{action}"})
        assert_problem(unknown, 404, "unknown-redemption", "id")
    conflict = api.as_("pos").post(f"{API}/redemptions/{hold_id}/release",
                                   headers={"Idempotency-Key": "hold-1-capture"})
    assert_problem(conflict, 409, "idempotency-conflict", "Idempotency-Key")
    assert api.snapshot("hold-ali") == before
    assert_journal_ok(engine)


@pytest.mark.parametrize(
    ("body", "headers", "status", "slug", "field_name"),
    [
        ({"member": "refuse-ali", "reward": "free-latte"}, {}, 422, "invalid-field",
         "Idempotency-Key"),
        ({"member": "refuse-ali"}, {"Idempotency-Key": "r-1"}, 422, "invalid-field", "reward"),
        ({"member": "refuse-ali", "reward": "cap", "points": 5}, {"Idempotency-Key": "r-2"},
         422, "invalid-field", "reward"),
        ({"member": "refuse-ali", "points": 0}, {"Idempotency-Key": "r-3"}, 422,
         "invalid-field", "points"),
        ({"member": "refuse-ali", "points": "5"}, {"Idempotency-Key": "r-4"}, 422,
         "invalid-field", "points"),
        ({"member": "refuse-ali", "points": 5, "hold": "yes"}, {"Idempotency-Key": "r-5"}, 422,
         "invalid-field", "hold"),
        ({"member": "refuse-ali", "points": 5, "tip": 1}, {"Idempotency-Key": "r-6"}, 422,
         "invalid-field", "tip"),
        ({"member": "ghost", "points": 5}, {"Idempotency-Key": "r-7"}, 404, "unknown-member",
         "member"),
        ({"member": "refuse-ali", "reward": "pony"}, {"Idempotency-Key": "r-8"}, 404,
         "unknown-reward", "reward"),
        ({"member": "refuse-ali", "reward": "gold-gift"}, {"Idempotency-Key": "r-9"}, 403,
         "reward-not-for-tier", "reward"),
        ({"member": "refuse-ali", "reward": "future-gift"}, {"Idempotency-Key": "r-10"}, 409,
         "reward-not-available", "reward"),
        ({"member": "refuse-ali", "reward": "past-gift"}, {"Idempotency-Key": "r-11"}, 409,
         "reward-not-available", "reward"),
        ({"member": "refuse-ali", "reward": "free-latte"}, {"Idempotency-Key": "r-12"}, 409,
         "insufficient-points", "points"),
        ({"member": "refuse-ali", "points": 51, "hold": True}, {"Idempotency-Key": "r-13"}, 409,
         "insufficient-points", "points"),
    ],
)
def test_a_refused_redemption_changes_nothing(
    api: Api, body: dict[str, Any], headers: dict[str, str], status: int, slug: str,
    field_name: str,
) -> None:
    if api.admin.get(f"{API}/members/refuse-ali").status_code == 404:
        api.enrol("refuse-ali")  # 50 available
    before = api.snapshot("refuse-ali")

    response = api.as_("pos").post(f"{API}/redemptions", json=body, headers=headers)

    problem = assert_problem(response, status, slug, field_name)
    if slug == "insufficient-points":
        assert (problem["available"], problem["required"]) == (50, body.get("points", 150))
    assert api.snapshot("refuse-ali") == before


def test_a_reward_limited_to_one_per_member_is_refused_the_second_time(
    api: Api, engine: sa.Engine
) -> None:
    api.enrol("cap-ali")
    api.adjust("cap-ali", 500, "cap-ali-topup")  # 550
    first = api.redeem({"member": "cap-ali", "reward": "cap"}, "cap-1")
    before = api.snapshot("cap-ali")

    second = api.redeem({"member": "cap-ali", "reward": "cap"}, "cap-2")
    held = api.redeem({"member": "cap-ali", "reward": "cap", "hold": True}, "cap-3")

    assert (first.status_code, first.json()["voucher"], first.json()["balances"]) == (
        201, None, balances(450))
    assert_problem(second, 409, "reward-limit-reached", "reward")
    assert_problem(held, 409, "reward-limit-reached", "reward")
    assert api.snapshot("cap-ali") == before
    assert_journal_ok(engine)


def test_a_reward_whose_stock_is_gone_is_sold_out_until_a_hold_is_released(
    api: Api, engine: sa.Engine
) -> None:
    for member in ("mug-ali", "mug-bea"):
        api.enrol(member)
        api.adjust(member, 500, f"{member}-topup")  # 550 each
    held = api.redeem({"member": "mug-ali", "reward": "mug", "hold": True}, "mug-1")
    before = api.snapshot("mug-ali", "mug-bea")

    sold_out = api.redeem({"member": "mug-bea", "reward": "mug"}, "mug-2")

    assert held.status_code == 201
    assert before["stock"][f"{CAFE}/mug"] == 1
    assert_problem(sold_out, 409, "reward-sold-out", "reward")
    assert api.snapshot("mug-ali", "mug-bea") == before

    released = api.as_("pos").post(f"{API}/redemptions/{held.json()['id']}/release",
                                   headers={"Idempotency-Key": "mug-1-release"})
    bought = api.redeem({"member": "mug-bea", "reward": "mug"}, "mug-3")

    assert released.status_code == 200
    assert bought.status_code == 201
    assert bought.json()["balances"] == balances(450)
    assert CROCKFORD_CODE.match(bought.json()["voucher"]["code"])
    assert api.stock()[f"{CAFE}/mug"] == 1
    assert api.member("mug-ali")["balances"] == balances(550)
    assert_journal_ok(engine)


# --------------------------------------------------------------------------- vouchers


def test_a_voucher_is_checked_used_once_and_then_refused(api: Api, engine: sa.Engine) -> None:
    api.enrol("vch-ali")
    api.adjust("vch-ali", 500, "vch-ali-topup")
    code = api.redeem({"member": "vch-ali", "reward": "free-latte"}, "vch-1").json()[
        "voucher"]["code"]

    checked = api.as_("member-read").get(f"{API}/vouchers/{code}")
    typed = api.as_("pos").get(f"{API}/vouchers/{code.lower()[:6]}-{code.lower()[6:]}")
    used = api.as_("pos").post(f"{API}/vouchers/{code}/use",
                               headers={"Idempotency-Key": "vch-use-1"})
    replayed = api.as_("pos").post(f"{API}/vouchers/{code}/use",
                                   headers={"Idempotency-Key": "vch-use-1"})
    before = api.snapshot("vch-ali")
    second = api.as_("pos").post(f"{API}/vouchers/{code}/use",
                                 headers={"Idempotency-Key": "vch-use-2"})
    after_use = api.as_("member-read").get(f"{API}/vouchers/{code}")

    assert checked.status_code == 200
    voucher = checked.json()
    assert {k: voucher[k] for k in ("code", "status", "reward", "benefit", "used_at")} == {
        "code": code, "status": "valid", "reward": "free-latte",
        "benefit": {"kind": "free_item", "free_item": "latte"}, "used_at": None}
    issued_at = datetime.fromisoformat(voucher["issued_at"])
    assert datetime.fromisoformat(voucher["expires_at"]) - issued_at == timedelta(days=30)
    assert typed.json() == voucher  # lower case and a dash, as a cashier types it
    assert used.status_code == 200
    assert used.json()["status"] == "used"
    assert used.json()["used_at"] is not None
    assert (replayed.status_code, replayed.json()) == (200, used.json())
    assert_problem(second, 409, "voucher-used", "code")
    assert api.snapshot("vch-ali") == before
    assert after_use.json() == used.json()
    assert_journal_ok(engine)


def test_an_unknown_voucher_is_refused(api: Api) -> None:
    checked = api.admin.get(f"{API}/vouchers/ZZZZZZZZZZZZ")
    used = api.admin.post(f"{API}/vouchers/ZZZZZZZZZZZZ/use",
                          headers={"Idempotency-Key": "vch-unknown"})
    no_key = api.admin.post(f"{API}/vouchers/ZZZZZZZZZZZZ/use")

    assert_problem(checked, 404, "unknown-voucher", "code")
    assert_problem(used, 404, "unknown-voucher", "code")
    assert_problem(no_key, 422, "invalid-field", "Idempotency-Key")


def test_a_voucher_past_its_expiry_is_shown_expired_and_refused(
    api: Api, engine: sa.Engine
) -> None:
    api.enrol("old-ali")
    api.adjust("old-ali", 500, "old-ali-topup")
    code = api.redeem({"member": "old-ali", "reward": "free-latte"}, "old-1").json()[
        "voucher"]["code"]
    # Vouchers expire by the server's real clock; instead of waiting 30 days, move this
    # voucher's expiry into the past in the database the server reads.
    with engine.begin() as conn:
        conn.execute(tables.vouchers.update().where(tables.vouchers.c.code == code)
                     .values(expires_at=datetime(2021, 1, 1, tzinfo=UTC)))
    before = api.snapshot("old-ali")

    checked = api.as_("pos").get(f"{API}/vouchers/{code}")
    used = api.as_("pos").post(f"{API}/vouchers/{code}/use",
                               headers={"Idempotency-Key": "old-use-1"})

    assert checked.json()["status"] == "expired"
    assert_problem(used, 409, "voucher-expired", "code")
    assert api.snapshot("old-ali") == before
    assert api.as_("pos").get(f"{API}/vouchers/{code}").json()["used_at"] is None
    assert_journal_ok(engine)


# --------------------------------------------------------------------------- adjustments


def test_an_adjustment_by_an_admin_is_explained_and_replayed_by_its_key(
    api: Api, engine: sa.Engine
) -> None:
    api.enrol("adj-ali")
    body = {"member": "adj-ali", "points": 120, "reason": "coffee machine broke"}

    added = api.as_("admin").post(f"{API}/adjustments", json=body,
                                  headers={"Idempotency-Key": "adj-1"})
    replayed = api.as_("admin").post(f"{API}/adjustments", json=body,
                                     headers={"Idempotency-Key": "adj-1"})
    taken = api.admin.post(f"{API}/adjustments", headers={"Idempotency-Key": "adj-2"},
                           json={"member": "adj-ali", "points": -70, "reason": "duplicate"})

    expected = {**body, "balances": balances(170)}
    assert (added.status_code, added.json()) == (201, expected)
    assert (replayed.status_code, replayed.json()) == (201, expected)
    assert (taken.status_code, taken.json()["balances"]) == (201, balances(100))
    lines = api.admin.get(f"{API}/members/adj-ali/activity").json()["data"]
    assert [(line["code"], line["points"], line["explanation"]) for line in lines[:2]] == [
        ("adjust", -70, "duplicate"), ("adjust", 120, "coffee machine broke")]
    assert_journal_ok(engine)


@pytest.mark.parametrize(
    ("body", "key", "status", "slug", "field_name"),
    [
        ({"member": "adjx-ali", "points": -101, "reason": "too much"}, "adjx-1", 409,
         "insufficient-points", "points"),
        ({"member": "adjx-ali", "points": 0, "reason": "nothing"}, "adjx-2", 422,
         "invalid-field", "points"),
        ({"member": "adjx-ali", "points": 1.5, "reason": "half"}, "adjx-3", 422,
         "invalid-field", "points"),
        ({"member": "adjx-ali", "points": 5}, "adjx-4", 422, "invalid-field", "reason"),
        ({"member": "adjx-ali", "points": 5, "reason": "  "}, "adjx-5", 422, "invalid-field",
         "reason"),
        ({"member": "adjx-ali", "points": 5, "reason": "x", "note": 1}, "adjx-6", 422,
         "invalid-field", "note"),
        ({"member": "ghost", "points": 5, "reason": "x"}, "adjx-7", 404, "unknown-member",
         "member"),
        ({"member": "adjx-ali", "points": 5, "reason": "other body"}, "adjx-used", 409,
         "idempotency-conflict", "Idempotency-Key"),
        ({"member": "adjx-ali", "points": 5, "reason": "x"}, None, 422, "invalid-field",
         "Idempotency-Key"),
    ],
)
def test_a_refused_adjustment_changes_nothing(
    api: Api, body: dict[str, Any], key: str | None, status: int, slug: str, field_name: str
) -> None:
    if api.admin.get(f"{API}/members/adjx-ali").status_code == 404:
        api.enrol("adjx-ali")
        api.adjust("adjx-ali", 50, "adjx-used")  # 100 available
    before = api.snapshot("adjx-ali")

    response = api.admin.post(f"{API}/adjustments", json=body,
                              headers={"Idempotency-Key": key} if key else {})

    assert_problem(response, status, slug, field_name)
    assert api.snapshot("adjx-ali") == before


def test_a_reversal_takes_back_a_review_and_gives_back_a_negative_adjustment(
    api: Api, engine: sa.Engine
) -> None:
    api.enrol("rev-ali")  # 50
    api.event({"id": "rev-review", "type": "review", "member": "rev-ali",
               "occurred_at": "2021-03-02T10:00:00+08:00"})  # 55
    api.admin.post(f"{API}/adjustments", headers={"Idempotency-Key": "rev-adj"},
                   json={"member": "rev-ali", "points": -20, "reason": "typo"})  # 35
    body = {"ref": "rev-review", "reason": "fake review"}

    reversed_review = api.admin.post(f"{API}/reversals", json=body,
                                     headers={"Idempotency-Key": "rev-1"})
    replayed = api.admin.post(f"{API}/reversals", json=body,
                              headers={"Idempotency-Key": "rev-1"})
    reversed_adjustment = api.admin.post(f"{API}/reversals",
                                         json={"ref": "adjust:rev-adj", "reason": "undo"},
                                         headers={"Idempotency-Key": "rev-2"})

    # 55 - 20 = 35; the review's 5 go back: 30; the adjustment's 20 come back: 50
    assert (reversed_review.status_code, reversed_review.json()) == (201, {
        **body, "members": [{"member": "rev-ali", "balances": balances(30)}]})
    assert (replayed.status_code, replayed.json()) == (201, reversed_review.json())
    assert reversed_adjustment.status_code == 201
    assert reversed_adjustment.json()["members"] == [
        {"member": "rev-ali", "balances": balances(50)}]

    before = api.snapshot("rev-ali")
    refusals = [
        (api.admin.post(f"{API}/reversals", json=body, headers={"Idempotency-Key": "rev-3"}),
         409, "already-reversed", "ref"),
        (api.admin.post(f"{API}/reversals", json={"ref": "rev-nothing", "reason": "x"},
                        headers={"Idempotency-Key": "rev-4"}), 404, "unknown-reference", "ref"),
        (api.admin.post(f"{API}/reversals", json={"ref": "rev-review"},
                        headers={"Idempotency-Key": "rev-5"}), 422, "invalid-field", "reason"),
        (api.admin.post(f"{API}/reversals", json={"ref": "rev-review", "reason": "other"},
                        headers={"Idempotency-Key": "rev-1"}), 409, "idempotency-conflict",
         "Idempotency-Key"),
    ]
    for response, status, slug, field_name in refusals:
        assert_problem(response, status, slug, field_name)
    assert api.snapshot("rev-ali") == before
    assert_journal_ok(engine)


# --------------------------------------------------------------------------- HTTP problems


def test_malformed_json_is_a_400_problem_and_changes_nothing(api: Api, victim: str) -> None:
    before = api.snapshot(victim)

    responses = [
        api.as_("pos").post(f"{API}/events", content=b'{"id": "x",',
                            headers={"Content-Type": "application/json"}),
        api.as_("pos").post(f"{API}/redemptions", content=b"{member}",
                            headers={"Content-Type": "application/json",
                                     "Idempotency-Key": "bad-json"}),
        api.admin.put(f"{API}/members/{victim}", content=b"\xff\xfe",
                      headers={"Content-Type": "application/json"}),
    ]

    for response in responses:
        assert_problem(response, 400, "malformed-request")
    assert api.snapshot(victim) == before


def nested(levels: int, inner: str = '"x"') -> str:
    """A redemption body whose ``reward`` nests arrays so that the body is ``levels`` deep
    (the object around it is one level)."""
    return '{"reward": ' + "[" * (levels - 1) + inner + "]" * (levels - 1) + "}"


@pytest.mark.parametrize(
    ("levels", "inner"),
    [(65, '"x"'), (300, '"x"'), (300, '"caf\\u00e9"'), (1100, '"x"')],
    ids=["65 levels", "300 levels", "300 levels with an escape", "1100 levels"])
def test_a_body_nested_deeper_than_64_levels_is_a_400_problem_and_changes_nothing(
        api: Api, victim: str, levels: int, inner: str) -> None:
    # Given a member token of the victim, and the server's log as it is
    issued = api.admin.post(f"{API}/members/{victim}/tokens")
    assert issued.status_code == 201, issued.text
    before = api.snapshot(victim)
    errors_before = api.live.log().count("unexpected error")
    body = nested(levels, inner)
    json_type = {"Content-Type": "application/json"}

    # When bodies nested that deep reach the member's, the till's, the coupon and the
    # event routes, and a programme in YAML
    with api.live.client(issued.json()["token"]) as member, \
            api.live.client(api.keys["pos"]) as pos:  # fresh: a 500 would close them
        answers = [
            member.post("/v1/me/redemptions", content=body,
                        headers={**json_type, "Idempotency-Key": f"deep-me-{levels}"}),
            pos.post(f"{API}/redemptions", content=body,
                     headers={**json_type, "Idempotency-Key": f"deep-pos-{levels}"}),
            pos.post(f"{API}/coupons/redeem", content=body,
                     headers={**json_type, "Idempotency-Key": f"deep-coupon-{levels}"}),
            pos.post(f"{API}/events", headers=json_type,
                     content=body.replace('{"reward": ', '{"id": "deep-1", "lines": ')),
            api.admin.put(API, content=body.replace('{"reward": ', f"id: {CAFE}\nnote: ")[:-1],
                          headers={"Content-Type": "application/yaml"}),
        ]

    # Then each is refused as a malformed body, naming the body, and nothing changed
    for answer in answers:
        problem = assert_problem(answer, 400, "malformed-request", "(body)")
        assert problem["detail"] == ("the body nests arrays and objects more than 64 levels "
                                     "deep")
    assert api.snapshot(victim) == before
    assert api.admin.get(API).json()["version"] == 1
    assert api.live.log().count("unexpected error") == errors_before


def test_a_body_nested_64_levels_deep_is_read(api: Api, victim: str) -> None:
    before = api.snapshot(victim)

    answer = api.as_("pos").post(f"{API}/redemptions", content=nested(64),
                                 headers={"Content-Type": "application/json",
                                          "Idempotency-Key": "deep-64"})

    # parsed, then refused by the redemption for what it says
    assert_problem(answer, 422, "invalid-field", "member")
    assert api.snapshot(victim) == before


def test_a_body_that_is_not_json_is_a_415_problem(api: Api, victim: str) -> None:
    before = api.snapshot(victim)
    body = purchase("ctype-1", victim, "10.00")

    responses = [
        api.as_("pos").post(f"{API}/events", data={"id": "ctype-1"}),  # a form
        api.as_("pos").post(f"{API}/events", content=str(body).encode(),
                            headers={"Content-Type": "text/plain"}),
        api.as_("pos").post(f"{API}/events", content=b"{}"),  # no content type at all
        api.admin.put(f"{API}/members/{victim}", content=b"name: x",
                      headers={"Content-Type": "application/yaml"}),  # YAML: programmes only
    ]

    for response in responses:
        assert_problem(response, 415, "unsupported-media-type")
    assert api.snapshot(victim) == before


def test_a_body_over_one_mebibyte_is_a_413_problem(api: Api, victim: str) -> None:
    before = api.snapshot(victim)
    big = b'{"id": "big", "attributes": {"x": "' + b"x" * (1024 * 1024) + b'"}}'

    declared = api.as_("pos").post(f"{API}/events", content=big,
                                   headers={"Content-Type": "application/json"})
    chunked = api.as_("pos").post(f"{API}/events", content=iter([big[:500_000], big[500_000:]]),
                                  headers={"Content-Type": "application/json"})
    programme = api.admin.put(f"/v1/programs/{CAFE}", content=b"#" * (1024 * 1024 + 1),
                              headers={"Content-Type": "application/yaml"})

    for response in (declared, chunked, programme):
        assert_problem(response, 413, "body-too-large")
    assert api.snapshot(victim) == before
    assert api.admin.get(f"/v1/programs/{CAFE}").json()["version"] == 1


@pytest.mark.parametrize(
    "path", ["/v2/programs", "/v1/programs", f"{API}/nothing-here", f"{API}/members/a/b/c",
             "/favicon.ico"])
def test_an_unknown_route_is_a_404_problem(api: Api, path: str) -> None:
    response = api.admin.get(path)

    assert_problem(response, 404, "not-found")


@pytest.mark.parametrize(
    ("method", "path"),
    [("DELETE", API), ("POST", API), ("PATCH", f"{API}/members/victim"),
     ("GET", f"{API}/events"), ("PUT", f"{API}/events/batch"), ("GET", f"{API}/redemptions"),
     ("DELETE", f"{API}/vouchers/ABC"), ("GET", f"{API}/adjustments"), ("POST", "/health")],
)
def test_a_wrong_method_is_a_405_problem_and_changes_nothing(
    api: Api, victim: str, method: str, path: str
) -> None:
    before = api.live.postings()

    response = api.admin.request(method, path, json={"name": "x"})

    assert_problem(response, 405, "method-not-allowed")
    assert response.headers["allow"]
    assert api.live.postings() == before


def test_a_405_lists_every_method_the_path_allows(api: Api) -> None:
    response = api.admin.delete(API)

    assert sorted(response.headers["allow"].replace(" ", "").split(",")) == ["GET", "PUT"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "slug", "field_name"),
    [
        ("POST", "/events", '{"id": "nul-1", "type": "purchase", "member": "a\\u0000b", '
         '"occurred_at": "2021-03-02T10:00:00+08:00", "order_id": "nul-1", "amount": "1.00"}',
         422, "invalid-field", "member"),
        ("POST", "/redemptions", '{"member": "a\\u0000b", "points": 1}', 422,
         "invalid-field", "member"),
        ("GET", "/members/a%00b", None, 404, "not-found", None),
        ("GET", "/vouchers/AB%00CD", None, 404, "not-found", None),
    ],
    ids=["event member", "redemption member", "member path", "voucher path"],
)
def test_a_nul_character_in_an_id_is_a_problem_not_a_server_error(
    api: Api, victim: str, method: str, path: str,
    body: str | None, status: int, slug: str, field_name: str | None,
) -> None:
    before = api.snapshot(victim)

    with api.live.client(api.keys["pos"]) as fresh:  # a 500 closes the kept-alive connection
        response = fresh.request(method, f"{API}{path}", content=body,
                                 headers={"Content-Type": "application/json",
                                          "Idempotency-Key": f"nul-{path}"})

    assert_problem(response, status, slug, field_name)
    assert api.snapshot(victim) == before


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/events", '{"id": "sur-1", "type": "purchase", "member": "a\\ud800b", '
         '"occurred_at": "2021-03-02T10:00:00+08:00", "order_id": "sur-1", "amount": "1.00"}'),
        ("POST", "/events/batch", '{"events": [{"id": "sur-2", "type": "review", '
         '"member": "a\\ud800b", "occurred_at": "2021-03-02T10:00:00+08:00"}]}'),
        ("POST", "/redemptions", '{"member": "a\\ud800b", "points": 1}'),
        ("PUT", "/members/victim", '{"name": "a\\ud800b"}'),
    ],
    ids=["event", "batch", "redemption", "member name"],
)
def test_a_lone_surrogate_in_a_string_is_a_problem_not_a_server_error(
    api: Api, victim: str, method: str, path: str, body: str
) -> None:
    before = api.snapshot(victim)

    with api.live.client(api.keys["pos"]) as fresh:
        response = fresh.request(method, f"{API}{path}", content=body,
                                 headers={"Content-Type": "application/json",
                                          "Idempotency-Key": f"sur-{path}"})

    assert response.status_code in (400, 404, 422), response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert api.snapshot(victim) == before


# --------------------------------------------------------------------------- keys and scopes


@dataclass(frozen=True)
class Endpoint:
    """A request that changes nothing when allowed (its body or target is refused later)."""

    method: str
    path: str
    scopes: tuple[str, ...]
    json: Any = None
    key: bool = False

    @property
    def name(self) -> str:
        return f"{self.method} {self.path}"


ALL = ("admin", "pos", "member-read")
WRITE = ("admin", "pos")
ENDPOINTS = [
    Endpoint("PUT", "", ("admin",), json={"id": CAFE}),
    Endpoint("GET", "", ALL),
    Endpoint("PUT", "/members/victim", WRITE, json={"nickname": "x"}),
    Endpoint("GET", "/members/victim", ALL),
    Endpoint("GET", "/members/victim/activity", ALL),
    Endpoint("POST", "/events", WRITE, json={}),
    Endpoint("POST", "/events/batch", WRITE, json={}),
    Endpoint("POST", "/simulate", WRITE, json={}),
    Endpoint("POST", "/redemptions", WRITE, json={}, key=True),
    Endpoint("POST", "/redemptions/rdm_nope/capture", WRITE, key=True),
    Endpoint("POST", "/redemptions/rdm_nope/release", WRITE, key=True),
    Endpoint("GET", "/vouchers/ZZZZZZZZZZZZ", ALL),
    Endpoint("POST", "/vouchers/ZZZZZZZZZZZZ/use", WRITE, key=True),
    Endpoint("POST", "/adjustments", ("admin",), json={}, key=True),
    Endpoint("POST", "/reversals", ("admin",), json={}, key=True),
]


def send(client: httpx.Client, endpoint: Endpoint, program: str = CAFE,
         authorization: str | None = None) -> httpx.Response:
    headers = {"Idempotency-Key": f"auth-{endpoint.name}"} if endpoint.key else {}
    if authorization is not None:
        headers["Authorization"] = authorization
    kwargs: dict[str, Any] = {"json": endpoint.json} if endpoint.json is not None else {}
    return client.request(endpoint.method, f"/v1/programs/{program}{endpoint.path}",
                          headers=headers, **kwargs)


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=[e.name for e in ENDPOINTS])
def test_every_endpoint_refuses_a_missing_or_wrong_key_with_401(
    api: Api, victim: str, endpoint: Endpoint
) -> None:
    before = api.snapshot(victim)
    with api.live.client() as anonymous:
        answers = [
            send(anonymous, endpoint),
            send(anonymous, endpoint, authorization="Bearer not-a-key"),
            send(anonymous, endpoint, authorization="Bearer sk_000000000000_forged"),
            send(anonymous, endpoint, authorization=f"Bearer {api.keys['pos']}x"),
            send(anonymous, endpoint, authorization=f"Basic {api.keys['admin']}"),
            send(anonymous, endpoint, authorization="Bearer"),
        ]

    for response in answers:
        assert_problem(response, 401, "unauthorized")
        assert response.headers["www-authenticate"] == "Bearer"
    assert api.snapshot(victim) == before


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=[e.name for e in ENDPOINTS])
def test_every_endpoint_refuses_a_key_of_the_wrong_scope_with_403(
    api: Api, victim: str, endpoint: Endpoint
) -> None:
    before = api.snapshot(victim)

    for scope in ALL:
        response = send(api.as_(scope), endpoint)
        if scope in endpoint.scopes:
            # let through: refused later for its body or target, never for the key
            assert response.status_code not in (401, 403), (scope, response.text)
        else:
            assert_problem(response, 403, "forbidden")
    assert api.snapshot(victim) == before


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=[e.name for e in ENDPOINTS])
def test_a_key_limited_to_another_programme_is_refused_with_403(
    api: Api, victim: str, endpoint: Endpoint
) -> None:
    before = api.snapshot(victim)

    response = send(api.as_("pos-kopi-only"), endpoint)

    problem = assert_problem(response, 403, "forbidden")
    if "pos" in endpoint.scopes:
        assert problem["detail"] == f"this API key is for programme {KOPI}, not {CAFE}"
    assert api.snapshot(victim) == before


def test_a_key_limited_to_a_programme_works_on_that_programme(api: Api) -> None:
    shown = api.as_("pos-kopi-only").get(f"/v1/programs/{KOPI}")
    enrolled = api.as_("pos-kopi-only").put(
        f"/v1/programs/{KOPI}/members/kopi-ali",
        json={"name": "Ali", "enrolled_at": "2027-03-01T09:00:00+08:00"})

    assert (shown.status_code, shown.json()["id"], shown.json()["version"]) == (200, KOPI, 1)
    assert enrolled.status_code == 201
    # Kopi Setia: welcome 50, pending for 3 days (until run-due activates it)
    assert enrolled.json()["balances"] == balances(0, pending=50)


def test_an_admin_key_made_by_the_cli_may_store_a_programme(api: Api) -> None:
    stored = api.as_("admin").put(f"/v1/programs/{CAFE}", json=CAFE_PROGRAMME)

    assert (stored.status_code, stored.json()) == (
        200, {"id": CAFE, "version": 1, "created": False})


# --------------------------------------------------------------------------- the end


def test_the_journal_checks_out_after_every_flow_of_the_module(api: Api) -> None:
    assert_setia_check_ok(api.live.db_url)
