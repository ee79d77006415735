"""End to end over HTTP: coupons, referrals, surveys and donations on a live ``setia serve``
(SQLite and PostgreSQL), with the operator's CLI commands against the same database.

The programme is growth-cafe (tests/growth_programme.py) with the ``cny`` batch coupon's
window removed, since the server runs on today's clock. Every refused request is
followed by a check that the journal, the coupon uses and the member are unchanged; the
module ends with ``setia check``.
"""

from __future__ import annotations

import copy
import csv
import io
from collections.abc import Iterator
from pathlib import Path
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
from tests.growth_programme import GROWTH

P = "growth-cafe"
API = f"/v1/programs/{P}"
PROGRAMME = copy.deepcopy(GROWTH)
for _coupon in PROGRAMME["coupons"]:
    if _coupon["id"] == "cny":
        del _coupon["from"], _coupon["until"]


class Api:
    def __init__(self, live: LiveServer, pos_key: str, read_key: str) -> None:
        self.live = live
        self.admin = live.client(live.admin_key)
        self.pos = live.client(pos_key)
        self.reader = live.client(read_key)

    def close(self) -> None:
        for client in (self.admin, self.pos, self.reader):
            client.close()

    def post(self, path: str, body: Any, key: str | None = None,
             client: httpx.Client | None = None) -> httpx.Response:
        headers = {"Idempotency-Key": key} if key else {}
        return (client or self.pos).post(f"{API}{path}", json=body, headers=headers)

    def enrol(self, member: str, **profile: Any) -> None:
        response = self.admin.put(f"{API}/members/{member}", json=profile)
        assert response.status_code == 201, response.text

    def available(self, member: str) -> int:
        return int(self.admin.get(f"{API}/members/{member}").json()["balances"]["available"])

    def state(self, *members: str) -> dict[str, Any]:
        """What a refused request must leave as it was."""
        with self.live.engine.connect() as conn:
            counts = {table: conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
                      for table in ("postings", "coupon_uses", "referrals", "survey_responses",
                                    "donations", "coupon_codes")}
            counts["used"] = conn.execute(sa.text(
                "SELECT count(*) FROM coupon_uses WHERE released_at IS NULL")).scalar_one()
        return {"counts": counts, "members": {m: self.available(m) for m in members}}


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres",
                                                               marks=pytest.mark.postgres)])
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Api]:
    directory = tmp_path_factory.mktemp(f"growth-{request.param}")
    with database_url(request.param, directory, "setia_e2e_growth") as url, \
            live_server(url, directory) as live:
        with live.client(live.admin_key) as admin:
            assert admin.put(API, json=PROGRAMME).status_code == 201
        api = Api(live, create_key(url, "pos"), create_key(url, "member-read"))
        yield api
        api.close()
        assert_setia_check_ok(url)


# --------------------------------------------------------------------------- coupons


def test_coupon_validate_redeem_replay_and_release(api: Api) -> None:
    api.enrol("c-ana")
    body = {"code": "welcome10", "member": "c-ana", "amount": "120.00"}
    valid = api.post("/coupons/validate", body)
    assert valid.status_code == 200, valid.text
    assert valid.json() == {"valid": True, "coupon": "welcome10", "code": "WELCOME10",
                            "member": "c-ana", "discount": "12.00", "currency": "MYR"}
    used = api.post("/coupons/redeem", {**body, "order_id": "c-o1"}, "c-k1")
    assert used.status_code == 201, used.text
    assert (used.json()["discount"], used.json()["released_at"]) == ("12.00", None)
    again = api.post("/coupons/redeem", {**body, "order_id": "c-o1"}, "c-k1")
    assert (again.status_code, again.json()) == (201, used.json())
    before = api.state("c-ana")
    assert_problem(api.post("/coupons/redeem", {**body, "order_id": "c-o2"}, "c-k2"), 409,
                   "coupon-member-limit", "member")
    assert_problem(api.post("/coupons/redeem", {**body, "order_id": "c-o3"}, "c-k1"), 409,
                   "idempotency-conflict", "Idempotency-Key")
    assert api.state("c-ana") == before
    uses = api.pos.get(f"{API}/coupons/uses", params={"order_id": "c-o1"})
    assert [u["code"] for u in uses.json()["uses"]] == ["WELCOME10"]
    released = api.post("/coupons/release", {"order_id": "c-o1"}, "c-rel")
    assert released.status_code == 200, released.text
    assert released.json()["released"][0]["released_at"] is not None
    assert_problem(api.post("/coupons/release", {"order_id": "c-o1"}, "c-rel2"), 404,
                   "unknown-coupon-use", "order_id")


@pytest.mark.parametrize(("body", "status", "slug", "field"), [
    ({"code": "NOPE", "member": "c-ben", "amount": "30.00"}, 404, "unknown-coupon", "code"),
    ({"code": "WELCOME10", "member": "c-ben", "amount": "19.99"}, 422, "coupon-min-spend",
     "amount"),
    ({"code": "WELCOME10", "member": "c-ben", "amount": "30.001"}, 422, "invalid-amount",
     "amount"),
    ({"code": "WELCOME10", "member": "c-ben", "amount": 30.5}, 422, "invalid-amount",
     "amount"),
    ({"code": "WELCOME10", "member": "c-nobody", "amount": "30.00"}, 404, "unknown-member",
     "member"),
    ({"code": "WELCOME10", "member": "c-ben", "amount": "30.00", "currency": "USD"}, 422,
     "currency-mismatch", "currency"),
    ({"code": "FIRSTCUP", "member": "c-ben", "amount": "30.00",
      "lines": [{"sku": "CAKE", "category": "pastry", "amount": "30.00"}]}, 422,
     "coupon-no-matching-lines", "lines"),
    ({"member": "c-ben", "amount": "30.00"}, 422, "invalid-field", "code"),
])
def test_bad_coupon_requests_are_problems_and_change_nothing(
        api: Api, body: dict[str, Any], status: int, slug: str, field: str) -> None:
    if api.admin.get(f"{API}/members/c-ben").status_code == 404:
        api.enrol("c-ben")
    before = api.state("c-ben")
    assert_problem(api.post("/coupons/redeem", {**body, "order_id": "c-bad"}, "c-bad"),
                   status, slug, field)
    assert_problem(api.post("/coupons/validate", body), status, slug, field)
    assert api.state("c-ben") == before


def test_coupon_requests_that_are_not_json_or_lack_a_key(api: Api) -> None:
    before = api.state()
    raw = api.pos.post(f"{API}/coupons/redeem", content=b"{nope",
                       headers={"Idempotency-Key": "c-x", "Content-Type": "application/json"})
    assert_problem(raw, 400, "malformed-request")
    assert_problem(api.post("/coupons/redeem", {"code": "WELCOME10"}), 422, "invalid-field",
                   "Idempotency-Key")
    assert_problem(api.post("/coupons/validate", {"code": "WELCOME10"},
                            client=api.reader), 403, "forbidden")
    assert api.state() == before


def test_a_batch_of_codes_over_http_and_the_cli(api: Api, tmp_path: Path) -> None:
    api.enrol("c-cai")
    made = api.post("/coupons/cny/batches", {"count": 40, "prefix": "ny"}, "c-batch",
                    client=api.admin)
    assert made.status_code == 201, made.text
    batch = made.json()
    assert (batch["coupon"], batch["count"], batch["prefix"]) == ("cny", 40, "NY")
    exported = api.admin.get(f"{API}/coupon-batches/{batch['id']}/codes")
    assert exported.status_code == 200
    assert exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert len({row["code"] for row in rows}) == 40
    code = rows[0]["code"]
    used = api.post("/coupons/redeem", {"code": code, "member": "c-cai", "amount": "10.00",
                                        "order_id": "c-o9"}, "c-k9")
    assert used.json()["discount"] == "8.00"
    before = api.state("c-cai")
    assert_problem(api.post("/coupons/redeem", {"code": code, "member": "c-cai",
                                                "amount": "10.00", "order_id": "c-o10"},
                            "c-k10"), 409, "coupon-code-used", "code")
    assert_problem(api.post("/coupons/cny/batches", {"count": 0}, "c-b0", client=api.admin),
                   422, "invalid-field", "count")
    assert_problem(api.post("/coupons/cny/batches", {"count": 5}, "c-b1"), 403, "forbidden")
    assert_problem(api.admin.get(f"{API}/coupon-batches/cpb_nope/codes"), 404,
                   "unknown-coupon-batch", "batch")
    assert api.state("c-cai") == before
    # the operator's command: 25 more codes with a progress bar, written as CSV
    out = tmp_path / "codes.csv"
    result = run_setia(api.live.db_url, "coupons", "generate", "cny", "--program", P,
                       "--count", "25", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "25 codes of coupon cny written" in result.stdout
    assert len(out.read_text().splitlines()) == 26
    refused = run_setia(api.live.db_url, "coupons", "generate", "welcome10", "--program", P,
                        "--count", "5", "--out", str(out))
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1].startswith(
        "error: coupon welcome10 has the public code WELCOME10")
    assert len(out.read_text().splitlines()) == 26  # the refusal left the file alone
    # a file that cannot be written is refused before any code is made
    with api.live.engine.connect() as conn:
        batches = conn.execute(sa.text("SELECT count(*) FROM coupon_batches")).scalar_one()
    unwritable = run_setia(api.live.db_url, "coupons", "generate", "cny", "--program", P,
                           "--count", "5", "--out", str(tmp_path))
    assert unwritable.returncode == 1
    assert unwritable.stderr.strip().splitlines() == [
        f"error: cannot write {tmp_path}: Is a directory"]
    with api.live.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM coupon_batches")
                            ).scalar_one() == batches
    missing = tmp_path / "new.csv"
    refused = run_setia(api.live.db_url, "coupons", "generate", "nope", "--program", P,
                        "--count", "5", "--out", str(missing))
    assert refused.returncode == 1 and not missing.exists()


# --------------------------------------------------------------------------- referrals


def test_a_referral_over_http_paid_by_run_due_and_reviewed(api: Api) -> None:
    api.enrol("r-rina", email="rina@example.com")
    code = api.reader.get(f"{API}/members/r-rina/referral")
    assert code.status_code == 200, code.text
    assert code.json()["link"] == f"https://growth.example/join?ref={code.json()['code']}"
    api.enrol("r-adi")
    linked = api.post("/referrals", {"code": code.json()["code"].lower(), "member": "r-adi",
                                     "ip": "203.0.113.7"}, "r-l1")
    assert linked.status_code == 201, linked.text
    assert linked.json()["status"] == "linked"
    event = api.pos.post(f"{API}/events", json={
        "id": "r-e1", "type": "purchase", "member": "r-adi", "order_id": "r-o1",
        "occurred_at": "2026-01-05T10:00:00+08:00", "amount": "25.00"})
    assert event.status_code == 201, event.text
    # 14 days after 2026-01-05: due on 2026-01-19
    ran = run_setia(api.live.db_url, "run-due", "--as-of", "2026-01-19T10:00:00+08:00")
    assert ran.returncode == 0, ran.stderr
    paid = api.admin.get(f"{API}/referrals/{linked.json()['id']}")
    assert paid.json()["status"] == "paid"
    assert api.available("r-rina") == 350  # welcome 50 + 300
    assert api.available("r-adi") == 225  # welcome 50 + 25 + 150

    # a self-referral (same gmail address, dots and +tag aside) waits for review
    api.enrol("r-rina-g", email="ri.na+x@gmail.com")
    api.enrol("r-rina-2", email="rina@gmail.com")
    other = api.reader.get(f"{API}/members/r-rina-g/referral").json()["code"]
    guarded = api.post("/referrals", {"code": other, "member": "r-rina-2"}, "r-l2")
    assert guarded.json()["status"] == "review"
    queue = api.admin.get(f"{API}/referrals", params={"status": "review"}).json()["referrals"]
    assert [q["referee"] for q in queue] == ["r-rina-2"]
    cli_queue = run_setia(api.live.db_url, "referrals", "queue", "--program", P)
    assert "r-rina-2" in cli_queue.stdout
    rejected = api.admin.post(f"{API}/referrals/{guarded.json()['id']}/reject",
                              json={"reason": "same person"},
                              headers={"Idempotency-Key": "r-rej"})
    assert (rejected.status_code, rejected.json()["status"]) == (200, "rejected")
    cli = run_setia(api.live.db_url, "referrals", "approve", guarded.json()["id"],
                    "--program", P)
    assert cli.returncode == 1
    assert "not in review" in cli.stderr


def test_bad_referral_requests_change_nothing(api: Api) -> None:
    api.enrol("r-bo")
    api.enrol("r-cy")
    code = api.reader.get(f"{API}/members/r-bo/referral").json()["code"]
    before = api.state("r-bo", "r-cy")
    assert_problem(api.post("/referrals", {"code": "ZZZZZZZZ", "member": "r-cy"}, "r-b1"), 404,
                   "unknown-referral-code", "code")
    assert_problem(api.post("/referrals", {"code": code, "member": "r-bo"}, "r-b2"), 409,
                   "self-referral", "code")
    assert_problem(api.post("/referrals", {"code": code, "member": "nobody"}, "r-b3"), 404,
                   "unknown-member", "member")
    assert_problem(api.post("/referrals", {"code": code, "member": "r-cy", "x": 1}, "r-b4"),
                   422, "invalid-field", "x")
    assert_problem(api.admin.get(f"{API}/referrals", params={"status": "lost"}), 422,
                   "invalid-field", "status")
    assert_problem(api.admin.get(f"{API}/referrals/rfl_nope"), 404, "unknown-referral", "id")
    assert_problem(api.admin.post(f"{API}/referrals/rfl_nope/approve",
                                  headers={"Idempotency-Key": "r-b5"}), 404,
                   "unknown-referral", "id")
    assert_problem(api.pos.get(f"{API}/referrals"), 403, "forbidden")
    assert api.state("r-bo", "r-cy") == before


# --------------------------------------------------------------------------- surveys


def test_survey_responses_rewards_and_nps(api: Api) -> None:
    api.enrol("s-ana")
    answered = api.post("/surveys/visit/responses", {
        "member": "s-ana", "answers": {"recommend": 10, "taste": 4},
        "submitted_at": "2026-02-03T10:00:00+08:00"}, "s-1")
    assert answered.status_code == 201, answered.text
    assert (answered.json()["points"], answered.json()["balances"]["available"]) == (20, 70)
    second = api.post("/surveys/visit/responses", {
        "member": "s-ana", "answers": {"recommend": 3, "taste": 2},
        "submitted_at": "2026-02-04T10:00:00+08:00"}, "s-2")
    assert second.json()["points"] == 0  # once a month
    before = api.state("s-ana")
    assert_problem(api.post("/surveys/visit/responses", {
        "member": "s-ana", "answers": {"recommend": 11, "taste": 4}}, "s-3"), 422,
        "invalid-field", "answers.recommend")
    assert_problem(api.post("/surveys/nope/responses", {
        "member": "s-ana", "answers": {}}, "s-4"), 404, "unknown-survey", "survey")
    assert_problem(api.admin.get(f"{API}/surveys/visit/results", params={"per": "hour"}), 422,
                   "invalid-field", "per")
    # a time near year 1 overflowed when moved to UTC or the programme's zone: a 500
    assert_problem(api.post("/surveys/visit/responses", {
        "member": "s-ana", "answers": {"recommend": 9, "taste": 4},
        "submitted_at": "0001-01-01T00:30:00+00:00"}, "s-5"), 422, "invalid-time",
        "submitted_at")
    assert_problem(api.admin.get(f"{API}/surveys/visit/results", params={
        "from": "0001-01-01T00:00:00+14:00"}), 422, "invalid-time", "from")
    assert api.state("s-ana") == before
    results = api.admin.get(f"{API}/surveys/visit/results", params={
        "per": "month", "from": "2026-02-01T00:00:00+08:00", "until": "2026-03-01T00:00:00+08:00"})
    assert results.status_code == 200, results.text
    # one promoter (10), one detractor (3): NPS 0.0; ratings 4 and 2: 3.00, 50.0 satisfied
    assert results.json()["periods"] == [{
        "period": "2026-02", "responses": 2, "scores": 2, "promoters": 1, "passives": 0,
        "detractors": 1, "nps": "0.0", "ratings": 2, "average_rating": "3.00",
        "satisfaction": "50.0"}]


# --------------------------------------------------------------------------- donations


def test_a_donation_reward_and_the_totals_per_cause(api: Api) -> None:
    api.enrol("d-ana")
    # 50 welcome + 100: one donation of 100, not two
    adjusted = api.admin.post(f"{API}/adjustments", headers={"Idempotency-Key": "d-adj"},
                              json={"member": "d-ana", "points": 100, "reason": "e2e"})
    assert adjusted.status_code == 201
    donated = api.post("/redemptions", {"member": "d-ana", "reward": "donate-mercy"}, "d-1")
    assert donated.status_code == 201, donated.text
    assert (donated.json()["points"], donated.json()["voucher"]) == (100, None)
    before = api.state("d-ana")
    assert_problem(api.post("/redemptions", {"member": "d-ana", "reward": "donate-mercy"},
                            "d-2"), 409, "insufficient-points")
    assert api.state("d-ana") == before
    totals = api.reader.get(f"{API}/causes")
    assert totals.status_code == 200
    assert totals.json()["causes"][0] == {
        "cause": "mercy", "name": "MERCY Malaysia", "donations": 1, "donors": 1,
        "points": 100, "amount": "1.00", "currency": "MYR", "retired": False}
    cli = run_setia(api.live.db_url, "donations", "totals", "--program", P)
    assert cli.returncode == 0 and "MYR 1.00" in cli.stdout
    assert_problem(api.reader.get("/v1/programs/nope/causes"), 404, "unknown-programme")
