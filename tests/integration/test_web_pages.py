"""The web pages through HTTP (in process), on SQLite and PostgreSQL: cookies, CSRF,
roles, the cashier's writes (idempotent by the form's key, nothing changed by a refusal),
a coupon at the till, the dashboard's figures, the programme editor with its what-if,
campaigns, coupons and their batches, the referral review queue, reports and their
downloads, the portal's referral link and data download."""

from __future__ import annotations

import asyncio
import csv
import html
import io
import json
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from setia.adapters.db import tables as t
from setia.adapters.db import tables_coupons as tc
from setia.adapters.db import tables_referrals as tr
from setia.entrypoints.api.app import create_app
from setia.entrypoints.web import growth_pages
from setia.service import (
    coupons,
    events,
    insights,
    members,
    redemptions,
    referrals,
    staff,
    store_credit,
)
from tests.browser.web_server import WEB_CAFE, Mailbox, link_in, smtp_server
from tests.conftest import assert_journal_ok, at, load_programme
from tests.e2e.api_server import free_port

P = "web-cafe"
PUBLIC = "https://rewards.web-cafe.example"  # SETIA_PUBLIC_URL of these tests


@pytest.fixture(autouse=True)
def public_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """Emailed links point at the public URL; the client's Host header is not trusted."""
    monkeypatch.setenv("SETIA_PUBLIC_URL", PUBLIC)


@pytest.fixture(autouse=True)
def quick_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    from argon2 import PasswordHasher

    quick = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    monkeypatch.setattr(staff, "_hasher", quick)
    monkeypatch.setattr(staff, "_DUMMY_HASH", quick.hash("not a password"))


@pytest.fixture
def cafe(engine: sa.Engine) -> sa.Engine:
    load_programme(engine, WEB_CAFE)
    staff.create_user(engine, "owner", "owner-password", "owner")
    staff.create_user(engine, "till", "till-password", "cashier", P)
    return engine


def client(engine: sa.Engine, base_url: str = "http://testserver") -> TestClient:
    return TestClient(create_app(engine), base_url=base_url)


def hidden(html: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert found, f"no hidden {name}"
    return found.group(1)


def signed_in(engine: sa.Engine, username: str, password: str) -> TestClient:
    browser = client(engine)
    page = browser.get("/staff/login")
    answer = browser.post("/staff/login", data={"username": username, "password": password,
                                                "csrf": hidden(page.text, "csrf")},
                          follow_redirects=False)
    assert answer.status_code == 303
    return browser


def balance(engine: sa.Engine, member_id: str) -> tuple[int, int]:
    with engine.connect() as conn:
        available = conn.execute(sa.select(t.members.c.available).where(
            t.members.c.id == member_id)).scalar_one()
        postings = conn.execute(sa.select(sa.func.count()).select_from(t.postings)).scalar_one()
    return available, postings


def coupon_rows(engine: sa.Engine) -> list[tuple[Any, ...]]:
    u = tc.coupon_uses
    with engine.connect() as conn:
        return [(row.coupon_id, row.code, row.member_id, row.order_id, str(row.discount),
                 row.released_at is not None)
                for row in conn.execute(sa.select(u).order_by(u.c.used_at, u.c.id))]


def batch_count(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(
            tc.coupon_batches)).scalar_one())


def test_session_cookie_flags_and_secure_over_tls(cafe: sa.Engine) -> None:
    for base, secure in (("http://testserver", False), ("https://testserver", True)):
        browser = client(cafe, base)
        page = browser.get("/staff/login")
        answer = browser.post("/staff/login", data={
            "username": "owner", "password": "owner-password",
            "csrf": hidden(page.text, "csrf")}, follow_redirects=False)
        cookie = next(value for key, value in answer.headers.multi_items()
                      if key == "set-cookie" and value.startswith("setia_staff="))
        flags = {part.strip().lower() for part in cookie.split(";")[1:]}
        assert {"httponly", "samesite=lax", "path=/"} <= flags
        assert ("secure" in flags) is secure


def test_forms_without_the_csrf_token_are_refused(cafe: sa.Engine) -> None:
    members.upsert_member(cafe, P, "m1", {"phone": "0123456789"})
    browser = client(cafe)
    browser.get("/staff/login")  # sets the form cookie
    refused = browser.post("/staff/login", data={"username": "owner",
                                                 "password": "owner-password",
                                                 "csrf": "forged"}, follow_redirects=False)
    assert refused.status_code == 403 and "setia_staff" not in refused.headers.get(
        "set-cookie", "")
    owner = signed_in(cafe, "owner", "owner-password")
    before = balance(cafe, "m1")
    for path, data in [
        (f"/staff/{P}/members/m1/adjust", {"points": "10", "reason": "x", "key": "k1"}),
        (f"/staff/{P}/cashier/m1/purchase", {"amount": "10.00", "key": "k2"}),
        (f"/staff/{P}/cashier/m1/points", {"points": "5", "key": "k3"}),
        (f"/staff/{P}/cashier/m1/purchase", {"amount": "30.00", "coupon": "WELCOME10",
                                             "key": "k4"}),
        (f"/staff/{P}/coupons/batches", {"coupon": "cny", "count": "3", "key": "k5"}),
        (f"/staff/{P}/coupons/release", {"order_id": "o1", "key": "k6"}),
        (f"/staff/{P}/referrals/rfl_x/approve", {"key": "k7"}),
    ]:
        assert owner.post(path, data=data).status_code == 403
        assert owner.post(path, data={**data, "csrf": "wrong"}).status_code == 403
    assert balance(cafe, "m1") == before
    assert coupon_rows(cafe) == [] and batch_count(cafe) == 0
    assert_journal_ok(cafe)


def test_login_throttling_over_http(cafe: sa.Engine) -> None:
    browser = client(cafe)
    token = hidden(browser.get("/staff/login").text, "csrf")
    for _ in range(5):
        wrong = browser.post("/staff/login", data={"username": "owner", "password": "nope",
                                                   "csrf": token})
        assert wrong.status_code == 401 and "Wrong username or password." in wrong.text
    locked = browser.post("/staff/login", data={"username": "owner",
                                                "password": "owner-password", "csrf": token})
    assert locked.status_code == 429 and "Too many attempts" in locked.text


def test_roles(cafe: sa.Engine) -> None:
    anonymous = client(cafe)
    answer = anonymous.get(f"/staff/{P}/cashier", follow_redirects=False)
    assert (answer.status_code, answer.headers["location"]) == (303, "/staff/login")
    till = signed_in(cafe, "till", "till-password")
    assert till.get(f"/staff/{P}/cashier").status_code == 200
    owner_pages = ("dashboard", "members", "programme", "rewards", "campaigns", "coupons",
                   "referrals", "reports")
    for page in owner_pages:
        assert till.get(f"/staff/{P}/{page}").status_code == 403
    assert till.get(f"/staff/{P}/reports/journal.csv").status_code == 403
    owner = signed_in(cafe, "owner", "owner-password")
    for page in ("cashier", *owner_pages):
        assert owner.get(f"/staff/{P}/{page}").status_code == 200
    home = owner.get("/staff/", follow_redirects=False)
    assert home.headers["location"] == f"/staff/{P}/dashboard"
    assert till.get("/staff/", follow_redirects=False).headers["location"] == f"/staff/{P}/cashier"


def test_cashier_enrols_records_and_takes_payment(cafe: sa.Engine) -> None:
    till = signed_in(cafe, "till", "till-password")
    page = till.get(f"/staff/{P}/cashier", params={"q": "019-876 5432"})
    assert "No member found." in page.text
    csrf, key = hidden(page.text, "csrf"), hidden(page.text, "key")
    form = {"phone": "019-876 5432", "name": "Ravi", "csrf": csrf, "key": key}
    first = till.post(f"/staff/{P}/cashier/enrol", data=form, follow_redirects=False)
    again = till.post(f"/staff/{P}/cashier/enrol", data=form, follow_redirects=False)
    member_id = first.headers["location"].split("/")[-1].split("?")[0]
    assert again.headers["location"].split("/")[-1].split("?")[0] == member_id
    assert balance(cafe, member_id)[0] == 50  # the welcome points, once
    # The phone typed another way finds the same member.
    other = till.post(f"/staff/{P}/cashier/enrol", data={**form, "key": "another-form-key",
                                                          "phone": "(019) 876-5432"},
                      follow_redirects=False)  # the same phone on another form
    assert other.headers["location"] == f"/staff/{P}/cashier/{member_id}"
    found = till.get(f"/staff/{P}/cashier", params={"q": "0198765432"}, follow_redirects=False)
    assert found.headers["location"] == f"/staff/{P}/cashier/{member_id}"
    scanned = till.get(f"/staff/{P}/cashier", params={"q": f"setia:member:{member_id}"},
                       follow_redirects=False)
    assert scanned.headers["location"] == f"/staff/{P}/cashier/{member_id}"

    page = till.get(f"/staff/{P}/cashier/{member_id}")
    key = hidden(page.text, "key")
    purchase = {"amount": "", "lines": "CROISSANT, pastry, 2, 13.00\nTEA, , 1, 4.50",
                "csrf": csrf, "key": key}
    done = till.post(f"/staff/{P}/cashier/{member_id}/purchase", data=purchase)
    # 17.50 at 1 a ringgit = 17, pastries 13.00 at 1 more = 13: 30.
    assert '<p class="huge" id="earned">+30 Beans</p>' in done.text
    assert '<p class="huge" id="balance">80 Beans</p>' in done.text
    after = balance(cafe, member_id)
    replay = till.post(f"/staff/{P}/cashier/{member_id}/purchase", data=purchase)
    assert "+30 Beans" in replay.text and balance(cafe, member_id) == after

    for path, data, status, message in [
        ("purchase", {"amount": "abc"}, 422, "The amount is not valid."),
        ("purchase", {"amount": "", "lines": "X, 1"}, 422, "A field is missing or invalid."),
        ("points", {"points": "81"}, 409, "Not enough points."),
        ("points", {"points": "-5"}, 422, "A field is missing or invalid."),
        ("voucher", {"code": "NOPE-1234"}, 404, "There is no voucher with this code."),
    ]:
        refused = till.post(f"/staff/{P}/cashier/{member_id}/{path}",
                            data={**data, "csrf": csrf, "key": f"k-{path}-{data}"})
        assert refused.status_code == status, refused.text
        assert message in refused.text
        assert balance(cafe, member_id) == after

    paid = till.post(f"/staff/{P}/cashier/{member_id}/points",
                     data={"points": "30", "csrf": csrf, "key": "pay-1"})
    assert "−30 Beans" in paid.text and '<p class="huge" id="balance">50 Beans</p>' in paid.text
    assert_journal_ok(cafe)


def test_vouchers_at_the_till(cafe: sa.Engine) -> None:
    members.upsert_member(cafe, P, "m1", {})
    redemptions.adjust(cafe, P, {"member": "m1", "points": 100, "reason": "test"}, "a1")
    voucher = redemptions.redeem(cafe, P, {"member": "m1", "reward": "free-latte"}, "r1")
    code = voucher["voucher"]["code"]
    till = signed_in(cafe, "till", "till-password")
    csrf = hidden(till.get(f"/staff/{P}/cashier/m1").text, "csrf")
    used = till.post(f"/staff/{P}/cashier/m1/voucher",
                     data={"code": f"setia:voucher:{code.lower()}", "csrf": csrf, "key": "v1"})
    assert "Voucher accepted" in used.text and "Free item" in used.text
    again = till.post(f"/staff/{P}/cashier/m1/voucher",
                      data={"code": code, "csrf": csrf, "key": "v2"})
    assert again.status_code == 409 and "This voucher was used already." in again.text


def test_owner_adjusts_and_sees_the_member_page(cafe: sa.Engine) -> None:
    members.upsert_member(cafe, P, "m1", {"name": "Mei", "email": "mei@example.com"})
    owner = signed_in(cafe, "owner", "owner-password")
    page = owner.get(f"/staff/{P}/members/m1")
    csrf, key = hidden(page.text, "csrf"), hidden(page.text, "key")
    no_reason = owner.post(f"/staff/{P}/members/m1/adjust",
                           data={"points": "5", "reason": " ", "csrf": csrf, "key": key})
    assert no_reason.status_code == 422 and balance(cafe, "m1")[0] == 50
    too_much = owner.post(f"/staff/{P}/members/m1/adjust",
                          data={"points": "-51", "reason": "typo", "csrf": csrf, "key": key})
    assert "Not enough points." in too_much.text and balance(cafe, "m1")[0] == 50
    done = owner.post(f"/staff/{P}/members/m1/adjust",
                      data={"points": "-20", "reason": "double scan", "csrf": csrf,
                            "key": key + "x"})
    assert '<p class="big-number" id="available">30</p>' in done.text
    assert "double scan (by owner)" in done.text
    found = owner.get(f"/staff/{P}/members", params={"q": "mei@"})
    assert f'href="/staff/{P}/members/m1"' in found.text
    assert_journal_ok(cafe)


def test_dashboard_figures(cafe: sa.Engine) -> None:
    def buy(member: str, event: str, when: str, amount: str) -> None:
        events.ingest_event(cafe, P, {"id": event, "type": "purchase", "member": member,
                                      "order_id": event, "occurred_at": when,
                                      "amount": amount})

    for member, enrolled in (("a", "2027-01-05T09:00:00+08:00"),
                             ("b", "2027-02-01T09:00:00+08:00"),
                             ("c", "2027-03-20T09:00:00+08:00")):
        members.upsert_member(cafe, P, member, {"enrolled_at": enrolled})
    buy("a", "e1", "2027-02-03T10:00:00+08:00", "10.00")
    buy("a", "e2", "2027-02-10T10:00:00+08:00", "20.00")
    buy("b", "e3", "2027-02-11T10:00:00+08:00", "5.50")
    buy("c", "e4", "2027-03-21T10:00:00+08:00", "7.00")  # after the period
    redemptions.redeem(cafe, P, {"member": "a", "points": 40}, "pay",
                       clock=lambda: at("2027-02-12T10:00:00+08:00"))
    assert insights.latest_activity_day(cafe, P) == date(2027, 3, 21)  # the default end
    figures = insights.dashboard(cafe, P, date(2027, 2, 1), date(2027, 2, 28))
    assert (figures["members"], figures["new_members"]) == (2, 1)
    assert (figures["active"], figures["repeaters"], figures["repeat_rate"]) == (2, 1, 0.5)
    assert (figures["purchases"], str(figures["sales"])) == (3, "35.50")
    assert (figures["issued"], figures["redeemed"]) == (50 + 10 + 20 + 5, 40)
    assert figures["liability"] == {"available": 50 + 30 - 40 + 55 + 57, "pending": 0,
                                    "reserved": 0}
    assert figures["tiers"] == [("member", "Member", 3), ("gold", "Gold", 0)]
    series = figures["series"]
    assert series["monthly"] is False and len(series["keys"]) == 28
    assert series["purchases"][2] == 1 and series["purchases"][9] == 1
    assert series["issued"][0] == 50 and series["redeemed"][11] == 40
    owner = signed_in(cafe, "owner", "owner-password")
    page = owner.get(f"/staff/{P}/dashboard", params={"from": "2027-02-01",
                                                       "to": "2027-02-28", "lang": "id"})
    assert '<html lang="id">' in page.text
    assert "RM 35,50" in page.text and "50%" in page.text and "1 Feb 2027" in page.text


def test_dashboard_points_are_net_of_clawbacks_and_leave_store_credit_out(
        cafe: sa.Engine) -> None:
    # Given Web Cafe giving 10 % cashback too, a's RM 40.00 purchase (40 points, RM 4.00
    # credit) and a refund of RM 15.00 of it (15 points and RM 1.50 back), and RM 2.00 of
    # her credit spent at the till, all in February
    load_programme(cafe, {**WEB_CAFE, "cashback": {"instant": [{"id": "all", "percent": 10}]}})
    members.upsert_member(cafe, P, "a", {"enrolled_at": "2027-01-05T09:00:00+08:00"})
    events.ingest_event(cafe, P, {"id": "e1", "type": "purchase", "member": "a",
                                  "order_id": "o1", "occurred_at": "2027-02-03T10:00:00+08:00",
                                  "amount": "40.00"})
    events.ingest_event(cafe, P, {"id": "r1", "type": "refund", "member": "a",
                                  "order_id": "o1", "occurred_at": "2027-02-04T10:00:00+08:00",
                                  "amount": "15.00"})
    held = store_credit.hold(cafe, P, {"member": "a", "amount": "2.00"}, "h1",
                             lambda: at("2027-02-05T10:00:00+08:00"))
    store_credit.capture_or_release(cafe, P, held["id"], "capture", None, "c1",
                                    lambda: at("2027-02-05T10:01:00+08:00"))

    # When the dashboard shows February
    figures = insights.dashboard(cafe, P, date(2027, 2, 1), date(2027, 2, 28))

    # Then points issued are 40 - 15 (400 - 150 sen of credit and the 200 spent were counted
    # as points, and the clawback was not subtracted), and none were redeemed
    assert (figures["issued"], figures["redeemed"]) == (25, 0)
    series = figures["series"]
    assert (series["issued"][2], series["issued"][3]) == (40, -15)
    assert sum(series["redeemed"]) == 0
    # and the page draws the day of the refund as no bar (a negative height is invalid SVG)
    owner = signed_in(cafe, "owner", "owner-password")
    page = owner.get(f"/staff/{P}/dashboard", params={"from": "2027-02-01", "to": "2027-02-28"})
    assert page.status_code == 200
    assert 'height="-' not in page.text
    assert_journal_ok(cafe)


def test_programme_editor(cafe: sa.Engine) -> None:
    members.upsert_member(cafe, P, "m1", {})
    owner = signed_in(cafe, "owner", "owner-password")
    page = owner.get(f"/staff/{P}/programme")
    csrf = hidden(page.text, "csrf")
    draft = insights.version_yaml(cafe, P, 1)
    assert draft is not None and draft.startswith("id: web-cafe\nname: Web Cafe\n")
    broken = owner.post(f"/staff/{P}/programme", data={
        "draft": draft.replace("cost: 100", "cost: -1"), "action": "save", "csrf": csrf})
    assert broken.status_code == 422 and "The draft is not valid:" in broken.text
    assert "rewards[0].cost" in broken.text
    changed = draft.replace("points: 50", "points: 75")
    preview = owner.post(f"/staff/{P}/programme", data={
        "draft": changed, "action": "preview", "member": "m1", "amount": "12.00",
        "csrf": csrf})
    assert preview.status_code == 200
    assert re.findall(r'<p class="big-number">\+(\d+)</p>', preview.text) == ["12", "12"]
    assert '<span class="del">-  points: 50</span>' in preview.text
    assert '<span class="add">+  points: 75</span>' in preview.text
    assert balance(cafe, "m1")[0] == 50  # a preview writes nothing
    saved = owner.post(f"/staff/{P}/programme", data={"draft": changed, "action": "save",
                                                     "csrf": csrf}, follow_redirects=False)
    assert saved.headers["location"] == f"/staff/{P}/programme?saved=2"
    history = owner.get(f"/staff/{P}/programme", params={"a": "1", "b": "2"})
    assert '<strong id="current-version">2</strong>' in history.text
    assert '<span class="add">+  points: 75</span>' in history.text
    assert [v["version"] for v in insights.versions(cafe, P)] == [2, 1]


def test_a_draft_saved_over_a_version_stored_meanwhile_is_refused_then_saved_knowingly(
        cafe: sa.Engine) -> None:
    # Given two owners who opened the editor at version 1
    first, second = (signed_in(cafe, "owner", "owner-password") for _ in range(2))
    pages = [owner.get(f"/staff/{P}/programme") for owner in (first, second)]
    assert [hidden(page.text, "base") for page in pages] == ["1", "1"]
    draft = insights.version_yaml(cafe, P, 1)
    assert draft is not None
    # When the first saves a richer signup bonus (version 2)
    mine = draft.replace("points: 50", "points: 75")
    saved = first.post(f"/staff/{P}/programme", data={
        "draft": mine, "action": "save", "base": "1", "csrf": hidden(pages[0].text, "csrf")},
        follow_redirects=False)
    assert saved.headers["location"] == f"/staff/{P}/programme?saved=2"
    # and the second, still on version 1, saves a dearer reward, in Malay
    theirs = draft.replace("cost: 100", "cost: 120")
    csrf = hidden(pages[1].text, "csrf")
    refused = second.post(f"/staff/{P}/programme", params={"lang": "ms"}, data={
        "draft": theirs, "action": "save", "base": "1", "csrf": csrf})
    # Then it is refused, nothing is stored, and the page shows the draft against version 2
    assert refused.status_code == 409
    assert "Seseorang telah menyimpan versi lain program ini" in refused.text
    assert "<code>base</code>" in refused.text
    assert [v["version"] for v in insights.versions(cafe, P)] == [2, 1]
    assert insights.version_yaml(cafe, P, 2) == mine
    assert '<span class="del">-  points: 75</span>' in refused.text
    assert '<span class="add">+  points: 50</span>' in refused.text
    assert hidden(refused.text, "base") == "2"
    kept = re.search(r'<textarea id="draft"[^>]*>(.*?)</textarea>', refused.text, re.DOTALL)
    assert kept is not None and html.unescape(kept.group(1)) == theirs
    # When the second saves again, having seen the changes, Then it becomes version 3
    again = second.post(f"/staff/{P}/programme", data={
        "draft": theirs, "action": "save", "base": "2", "csrf": csrf}, follow_redirects=False)
    assert again.headers["location"] == f"/staff/{P}/programme?saved=3"
    assert insights.version_yaml(cafe, P, 3) == theirs
    # and a base that is no version is refused by name, storing nothing
    odd = second.post(f"/staff/{P}/programme", data={
        "draft": mine, "action": "save", "base": "2x", "csrf": csrf})
    assert odd.status_code == 422 and "Satu medan tiada atau tidak sah." in odd.text
    assert "<code>base</code>" in odd.text
    assert [v["version"] for v in insights.versions(cafe, P)] == [3, 2, 1]
    assert_journal_ok(cafe)


def test_rewards_page_shows_stock(cafe: sa.Engine) -> None:
    members.upsert_member(cafe, P, "m1", {})
    redemptions.adjust(cafe, P, {"member": "m1", "points": 1000, "reason": "test"}, "a1")
    redemptions.redeem(cafe, P, {"member": "m1", "reward": "mug"}, "r1")
    rows = {r["id"]: (r["redeemed"], r["left"]) for r in insights.rewards_with_stock(cafe, P)}
    assert rows == {"free-latte": (0, None), "mug": (1, 4)}
    owner = signed_in(cafe, "owner", "owner-password")
    assert "4 / 5" in owner.get(f"/staff/{P}/rewards").text


def portal(engine: sa.Engine, member_id: str, email: str) -> TestClient:
    members.upsert_member(engine, P, member_id, {"email": email})
    _, token = staff.request_link(engine, P, email)
    browser = client(engine)
    landing = browser.get(f"/portal/{P}/link/{token}")
    signed = browser.post(f"/portal/{P}/link/{token}",
                          data={"csrf": hidden(landing.text, "csrf")}, follow_redirects=False)
    assert signed.headers["location"] == f"/portal/{P}/"
    return browser


def test_portal_redeem_language_and_data(cafe: sa.Engine) -> None:
    browser = portal(cafe, "m1", "m1@example.com")
    redemptions.adjust(cafe, P, {"member": "m1", "points": 60, "reason": "test"}, "a1")
    home = browser.get(f"/portal/{P}/", headers={"accept-language": "ms-MY,ms;q=0.9"})
    assert '<html lang="ms">' in home.text and "Ganjaran saya" in home.text
    assert '<p class="big-number" id="balance">110</p>' in home.text
    csrf, key = hidden(home.text, "csrf"), hidden(home.text, "key")
    redeemed = browser.post(f"/portal/{P}/redeem", data={"reward": "free-latte",
                                                         "key": key, "csrf": csrf},
                            follow_redirects=False)
    code = redeemed.headers["location"].split("redeemed=")[1]
    assert balance(cafe, "m1")[0] == 10
    poor = browser.post(f"/portal/{P}/redeem", data={"reward": "free-latte", "key": "k2",
                                                     "csrf": csrf})
    assert poor.status_code == 409 and balance(cafe, "m1")[0] == 10
    browser.post(f"/portal/{P}/profile", data={"name": "Mei Ling", "phone": "",
                                               "language": "zh_Hant", "csrf": csrf})
    home = browser.get(f"/portal/{P}/", headers={"accept-language": "ms"})
    assert '<html lang="zh-Hant">' in home.text and "Mei Ling，您好" in home.text
    assert code in home.text
    data = browser.get(f"/portal/{P}/my-data.json")
    assert data.headers["content-disposition"] == f'attachment; filename="{P}-m1.json"'
    body = json.loads(data.text)
    assert body["member"]["name"] == "Mei Ling"
    assert [v["code"] for v in body["vouchers"]] == [code]
    assert sorted(line["points"] for line in body["activity"]) == [-100, 50, 60]
    # Another member's session never reaches m1, and the portal's forms need the token.
    assert browser.post(f"/portal/{P}/redeem", data={"reward": "free-latte", "key": "k3",
                                                     "csrf": "forged"}).status_code == 403
    browser.post(f"/portal/{P}/signout", data={"csrf": csrf})
    assert browser.get(f"/portal/{P}/", follow_redirects=False).status_code == 303
    assert_journal_ok(cafe)


def test_sign_in_request_answers_the_same_for_unknown_emails(cafe: sa.Engine,
                                                             caplog: pytest.LogCaptureFixture,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    monkeypatch.delenv("SETIA_SMTP_HOST", raising=False)
    members.upsert_member(cafe, P, "m1", {"email": "m1@example.com"})
    browser = client(cafe)
    csrf = hidden(browser.get(f"/portal/{P}/signin").text, "csrf")
    known = browser.post(f"/portal/{P}/signin", data={"email": "m1@example.com", "csrf": csrf})
    unknown = browser.post(f"/portal/{P}/signin", data={"email": "x@example.com", "csrf": csrf})
    assert known.status_code == unknown.status_code == 200
    assert 'id="sent"' in known.text and 'id="sent"' in unknown.text
    # one link, for the known address only (the log filter masks the address itself)
    assert sum("sign-in link for" in r.getMessage() for r in caplog.records) == 1


def ask_link(browser: TestClient, email: str, host: str | None = None) -> Any:
    csrf = hidden(browser.get(f"/portal/{P}/signin").text, "csrf")
    return browser.post(f"/portal/{P}/signin", data={"email": email, "csrf": csrf},
                        headers={"host": host} if host else None)


def same_page(answer: Any, email: str, other: Any, other_email: str) -> bool:
    return bool(answer.status_code == other.status_code == 200 and 'id="sent"' in answer.text
                and answer.text.replace(email, other_email) == other.text)


def test_sign_in_links_point_at_the_public_url_never_the_host_header(
        cafe: sa.Engine, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    for n in range(1, 6):
        members.upsert_member(cafe, P, f"m{n}", {"email": f"m{n}@example.com"})
    browser = client(cafe)
    with smtp_server() as (mailbox, port):
        monkeypatch.setenv("SETIA_SMTP_HOST", "127.0.0.1")
        monkeypatch.setenv("SETIA_SMTP_PORT", str(port))
        # when an attacker asks for a member's link naming their own host
        ask_link(browser, "m1@example.com", host="evil.example")
        # then the member's link points at SETIA_PUBLIC_URL
        assert link_in(mailbox.wait_for(1)).startswith(f"{PUBLIC}/portal/{P}/link/")
        assert "evil.example" not in mailbox.messages[0].as_string()

        # given no SETIA_PUBLIC_URL: no link for a host that is not a loopback name, a
        # warning naming the setting, and the page of an unknown address
        monkeypatch.delenv("SETIA_PUBLIC_URL")
        caplog.clear()
        refused = ask_link(browser, "m2@example.com", host="evil.example")
        unknown = ask_link(browser, "nobody@example.com", host="evil.example")
        assert same_page(refused, "m2@example.com", unknown, "nobody@example.com")
        assert len(mailbox.messages) == 1
        assert any("SETIA_PUBLIC_URL is not set" in r.getMessage() for r in caplog.records)
        # a loopback host (setia demo on a laptop) gets its own address in the link
        for n, host, base in [(3, "127.0.0.1:8000", "http://127.0.0.1:8000"),
                              (4, "localhost:8000", "http://localhost:8000"),
                              (5, "[::1]:8000", "http://[::1]:8000")]:
            ask_link(browser, f"m{n}@example.com", host=host)
            assert link_in(mailbox.wait_for(n - 1)).startswith(f"{base}/portal/{P}/link/")
        assert len(mailbox.messages) == 4


def test_a_known_address_is_mailed_and_smtp_down_answers_the_same_page(
        cafe: sa.Engine, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    members.upsert_member(cafe, P, "m1", {"email": "m1@example.com"})
    monkeypatch.setenv("SETIA_SMTP_HOST", "127.0.0.1")
    browser = client(cafe)
    with smtp_server() as (mailbox, port):
        monkeypatch.setenv("SETIA_SMTP_PORT", str(port))
        sent = ask_link(browser, "m1@example.com")
        message = mailbox.wait_for(1)
    assert sent.status_code == 200 and message["To"] == "m1@example.com"
    assert message["Subject"] == "Your sign-in link for Web Cafe"
    # when no SMTP server listens
    monkeypatch.setenv("SETIA_SMTP_PORT", str(free_port()))
    caplog.clear()
    known = ask_link(browser, "m1@example.com")
    unknown = ask_link(browser, "nobody@example.com")
    # then the known address gets the unknown one's page, and the error is logged
    assert same_page(known, "m1@example.com", unknown, "nobody@example.com")
    assert [r.levelname for r in caplog.records
            if "sign-in link not sent" in r.getMessage()] == ["ERROR"]


@dataclass
class HeldMailbox(Mailbox):
    """Keeps each message waiting at DATA until ``release`` is set."""

    release: threading.Event = field(default_factory=threading.Event)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        while not self.release.is_set():
            await asyncio.sleep(0.01)
        return await super().handle_DATA(server, session, envelope)


def test_the_answer_does_not_wait_for_the_mail(cafe: sa.Engine,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """On a real server: the page answers while the SMTP server still holds the mail, so
    a known address answers as quickly as an unknown one."""
    import uvicorn
    from aiosmtpd.controller import Controller

    members.upsert_member(cafe, P, "m1", {"email": "m1@example.com"})
    mailbox, smtp_port, web_port = HeldMailbox(), free_port(), free_port()
    smtp = Controller(mailbox, hostname="127.0.0.1", port=smtp_port)
    smtp.start()
    monkeypatch.setenv("SETIA_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("SETIA_SMTP_PORT", str(smtp_port))
    server = uvicorn.Server(uvicorn.Config(create_app(cafe), host="127.0.0.1", port=web_port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            assert thread.is_alive()
            time.sleep(0.01)
        with httpx.Client(base_url=f"http://127.0.0.1:{web_port}", timeout=5) as browser:
            csrf = hidden(browser.get(f"/portal/{P}/signin").text, "csrf")
            answer = browser.post(f"/portal/{P}/signin",
                                  data={"email": "m1@example.com", "csrf": csrf})
        assert answer.status_code == 200 and 'id="sent"' in answer.text
        assert mailbox.messages == []  # the mail is still held
        mailbox.release.set()
        assert link_in(mailbox.wait_for(1)).startswith(f"{PUBLIC}/portal/{P}/link/")
    finally:
        mailbox.release.set()
        server.should_exit = True
        thread.join(timeout=15)
        smtp.stop()



def test_static_files_and_security_headers(cafe: sa.Engine) -> None:
    browser = client(cafe)
    css = browser.get("/static/web/setia.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    script = browser.get("/static/web/setia.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert browser.get("/static/web/../tables.py").status_code == 404
    assert browser.get("/static/web/nope.js").status_code == 404
    page = browser.get("/staff/login")
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["cache-control"] == "no-store"
    # the pages may use the camera (the cashier's Scan buttons); the API may not
    assert page.headers["permissions-policy"] == (
        "camera=(self), microphone=(), geolocation=(), payment=()")
    assert browser.get("/health").headers["permissions-policy"].startswith("camera=()")
    assert browser.get("/", follow_redirects=False).headers["location"] == "/staff/"


def test_the_enrol_form_sent_again_with_other_details_rewrites_nobody(cafe: sa.Engine) -> None:
    # Given a walk-in customer enrolled at the till
    till = signed_in(cafe, "till", "till-password")
    page = till.get(f"/staff/{P}/cashier", params={"q": "019-876 5432"})
    csrf, key = hidden(page.text, "csrf"), hidden(page.text, "key")
    first = till.post(f"/staff/{P}/cashier/enrol", data={
        "phone": "019-876 5432", "name": "Ravi", "email": "ravi@example.com", "csrf": csrf,
        "key": key}, follow_redirects=False)
    member_id = first.headers["location"].split("/")[-1].split("?")[0]
    # When the same form is sent again with another phone, name and email (the member
    # took them: a sign-in link to that email then opened the member's portal)
    again = till.post(f"/staff/{P}/cashier/enrol", data={
        "phone": "011-1111 2222", "name": "Mallory", "email": "mallory@example.com",
        "csrf": csrf, "key": key}, follow_redirects=False)
    # Then it says the form enrolled a member already, and leaves the member unchanged
    assert again.status_code == 409
    assert "This form was already sent with other values; reload the page." in again.text
    with cafe.connect() as conn:
        row = conn.execute(sa.select(t.members.c.name, t.members.c.phone, t.members.c.email)
                           .where(t.members.c.id == member_id)).one()
    assert tuple(row) == ("Ravi", "019-876 5432", "ravi@example.com")
    # and a key without letters or digits enough is refused, not the one member "w-"
    short = till.post(f"/staff/{P}/cashier/enrol", data={
        "phone": "012-000 0000", "csrf": csrf, "key": "--------"}, follow_redirects=False)
    assert short.status_code == 422
    assert_journal_ok(cafe)


@pytest.mark.parametrize(("path", "data"), [
    (f"/staff/{P}/cashier/m1/points", {"points": "\u00b2"}),
    (f"/staff/{P}/cashier/m1/points", {"points": "9" * 23}),
    (f"/staff/{P}/cashier/m1/purchase", {"amount": "", "lines": "A, , \u00b2, 3.00"}),
    (f"/staff/{P}/coupons/batches", {"coupon": "cny", "count": "\u00b2"}),
])
def test_odd_numbers_in_staff_forms_answer_422_and_change_nothing(
        cafe: sa.Engine, path: str, data: dict[str, str]) -> None:
    # (int() refuses the digits str.isdigit() takes, and 23 nines overflowed the hash of
    # the request: a 500 each)
    members.upsert_member(cafe, P, "m1", {"phone": "0123456789"})
    redemptions.adjust(cafe, P, {"member": "m1", "points": 100, "reason": "t"}, "a1")
    owner = signed_in(cafe, "owner", "owner-password")
    csrf = hidden(owner.get(f"/staff/{P}/cashier/m1").text, "csrf")
    before = (balance(cafe, "m1"), batch_count(cafe))
    answer = owner.post(path, data={**data, "csrf": csrf, "key": "review-key-1"})
    assert answer.status_code == 422
    assert (balance(cafe, "m1"), batch_count(cafe)) == before
    assert_journal_ok(cafe)


@pytest.mark.parametrize("query", [
    "dashboard?to=0001-01-01", "campaigns?to=0001-01-01",
    "reports?from=9999-12-31&to=9999-12-31", "programme?a=99999999999999999999",
    "programme?a=0&b=-1",
])
def test_odd_query_values_on_owner_pages_fall_back_to_the_defaults(
        cafe: sa.Engine, query: str) -> None:
    owner = signed_in(cafe, "owner", "owner-password")
    assert owner.get(f"/staff/{P}/{query}").status_code == 200


# ----------------------------------------------------------------------------- growth


def test_a_coupon_at_the_till_discounts_the_purchase_and_points_follow_what_was_paid(
        cafe: sa.Engine) -> None:
    members.upsert_member(cafe, P, "m1", {})
    members.upsert_member(cafe, P, "m2", {})
    till = signed_in(cafe, "till", "till-password")
    page = till.get(f"/staff/{P}/cashier/m1")
    csrf, key = hidden(page.text, "csrf"), hidden(page.text, "key")
    basket = {"amount": "", "lines": "CAKE, pastry, 1, 8.50\nLATTE, coffee, 2, 20.00",
              "coupon": " welcome-10 ", "csrf": csrf}
    # Checking the coupon answers the discount and uses nothing.
    checked = till.post(f"/staff/{P}/cashier/m1/purchase", data={**basket, "action": "check",
                                                                 "key": "check-1"})
    assert checked.status_code == 200
    assert '<p class="huge" id="discount">−RM 2.85</p>' in checked.text
    assert '<span id="to-pay">RM 25.65</span>' in checked.text
    # the form keeps what was typed
    assert ('<textarea id="lines" name="lines" rows="3">CAKE, pastry, 1, 8.50\n'
            'LATTE, coffee, 2, 20.00</textarea>') in checked.text
    assert 'id="coupon" name="coupon" autocomplete="off" autocapitalize="characters" ' \
        'value=" welcome-10 "' in checked.text
    assert coupon_rows(cafe) == [] and balance(cafe, "m1") == (50, 2)

    # 10% of 28.50 = 2.85, spread 0.85 / 2.00 over the lines: CAKE 7.65, LATTE 18.00.
    # Points on what was paid: base floor(25.65) = 25, pastry bonus floor(7.65) = 7.
    done = till.post(f"/staff/{P}/cashier/m1/purchase", data={**basket, "action": "record",
                                                              "key": key})
    assert done.status_code == 200, done.text
    assert '<p class="huge" id="discount">−RM 2.85</p>' in done.text
    assert '<span id="to-pay">RM 25.65</span>' in done.text
    assert "RM 28.50 before the coupon" in done.text
    assert '<p class="huge" id="earned">+32 Beans</p>' in done.text
    assert '<p class="huge" id="balance">82 Beans</p>' in done.text
    order = f"web-{key}"
    assert coupon_rows(cafe) == [("welcome10", "WELCOME10", "m1", order, "2.8500", False)]
    with cafe.connect() as conn:
        stored = conn.execute(sa.select(t.events.c.payload).where(
            t.events.c.id == order)).scalar_one()
    stored = json.loads(stored) if isinstance(stored, str) else stored
    assert (stored["amount"], [line["amount"] for line in stored["lines"]]) == (
        "25.65", ["7.65", "18.00"])
    after = balance(cafe, "m1")
    assert after == (82, 4)
    # The same form again: the same answer, nothing new.
    again = till.post(f"/staff/{P}/cashier/m1/purchase", data={**basket, "action": "record",
                                                               "key": key})
    assert "+32 Beans" in again.text and "−RM 2.85" in again.text
    assert balance(cafe, "m1") == after and len(coupon_rows(cafe)) == 1

    # Every refusal: the problem in words, and no purchase, no coupon use.
    for member, data, status, message in [
        ("m1", {"amount": "30.00", "coupon": "WELCOME10"}, 409,
         "This member has used this coupon as often as allowed."),
        ("m2", {"amount": "12.00", "coupon": "WELCOME10"}, 422,
         "The purchase is below the coupon's minimum spend."),
        ("m2", {"amount": "", "lines": "LATTE, coffee, 1, 12.00", "coupon": "PASTRY5"}, 422,
         "No line of the purchase is in the coupon's categories."),
        ("m2", {"amount": "30.00", "coupon": "NOPE99"}, 404,
         "There is no coupon with this code."),
        ("m2", {"amount": "30.00", "lines": "CAKE, pastry, 1, 8.50", "coupon": "WELCOME10"},
         422, "A field is missing or invalid."),
        ("m2", {"amount": "12.345", "coupon": "PASTRY5"}, 422, "The amount is not valid."),
    ]:
        before = balance(cafe, member)
        refused = till.post(f"/staff/{P}/cashier/{member}/purchase",
                            data={**data, "csrf": csrf, "key": f"k-{member}-{data}"})
        assert refused.status_code == status, (data, refused.text)
        assert message in refused.text, data
        assert balance(cafe, member) == before
        assert len(coupon_rows(cafe)) == 1
    # The coupon and the purchase are written together or not at all: a form already
    # recorded without a coupon, sent again with one, leaves no coupon use behind.
    plain = till.post(f"/staff/{P}/cashier/m2/purchase", data={
        "amount": "25.00", "csrf": csrf, "key": "plain-1"})
    assert "+25 Beans" in plain.text
    before = balance(cafe, "m2")
    twice = till.post(f"/staff/{P}/cashier/m2/purchase", data={
        "amount": "25.00", "coupon": "WELCOME10", "csrf": csrf, "key": "plain-1"})
    assert twice.status_code == 409
    assert "This form was already sent with other values" in twice.text
    assert balance(cafe, "m2") == before and len(coupon_rows(cafe)) == 1
    # A refused check uses nothing either.
    refused = till.post(f"/staff/{P}/cashier/m2/purchase",
                        data={"amount": "30.00", "coupon": "", "action": "check", "csrf": csrf,
                              "key": "k-check"})
    assert refused.status_code == 422 and "<code>coupon</code>" in refused.text
    # PASTRY5 on a pastry line: RM 5.00 off the CAKE only, 3.50 left of it.
    pastry = till.post(f"/staff/{P}/cashier/m2/purchase", data={
        "lines": "CAKE, pastry, 1, 8.50\nTEA, , 1, 4.00", "coupon": "pastry5",
        "csrf": csrf, "key": "pastry-1"})
    # base floor(7.50) = 7, pastry bonus floor(3.50) = 3
    assert '<p class="huge" id="earned">+10 Beans</p>' in pastry.text
    assert '<span id="to-pay">RM 7.50</span>' in pastry.text
    assert balance(cafe, "m2") == (50 + 25 + 10, 7)
    assert_journal_ok(cafe)


def test_the_referral_review_queue_approves_and_rejects(cafe: sa.Engine) -> None:
    # b and c share a's mailbox: self-referral guard, both wait for review.
    enrolled = "2026-10-01T09:00:00+08:00"
    for member in ("a", "b", "c"):
        members.upsert_member(cafe, P, member, {"email": "ana@example.com",
                                                "enrolled_at": enrolled})
    code = referrals.code_for(cafe, P, "a")["code"]
    held = referrals.link(cafe, P, {"code": code, "member": "b"}, "link-b")
    other = referrals.link(cafe, P, {"code": code, "member": "c"}, "link-c")
    assert (held["status"], other["status"]) == ("review", "review")
    events.ingest_event(cafe, P, {"id": "b-1", "type": "purchase", "member": "b",
                                  "order_id": "b-1", "amount": "30.00",
                                  "occurred_at": "2026-10-03T10:00:00+08:00"})
    owner = signed_in(cafe, "owner", "owner-password")
    queue = owner.get(f"/staff/{P}/referrals")
    assert queue.status_code == 200
    assert f'id="referral-{held["id"]}"' in queue.text
    assert f'id="referral-{other["id"]}"' in queue.text
    assert "self-referral: the same email or phone as the referrer" in queue.text
    csrf, key = hidden(queue.text, "csrf"), hidden(queue.text, "key")

    def postings_of(referral_id: str) -> list[tuple[str, int]]:
        with cafe.connect() as conn:
            rows = conn.execute(sa.select(t.members.c.id, t.postings.c.points).join(
                t.members, t.members.c.pk == t.postings.c.member_pk).where(
                t.postings.c.rule_id == f"referral:{referral_id}").order_by(t.members.c.id))
            return [(row.id, row.points) for row in rows]

    before = (balance(cafe, "a"), balance(cafe, "b"))
    assert before == ((50, 4), (80, 4))
    for path, data, status, message in [
        (f"referrals/{held['id']}/approve", {"key": "x", "csrf": "forged"}, 403, ""),
        ("referrals/rfl_unknown/approve", {"key": "u-1", "csrf": csrf}, 404,
         "There is no such referral."),
        (f"referrals/{held['id']}/maybe", {"key": "m-1", "csrf": csrf}, 404, ""),
    ]:
        refused = owner.post(f"/staff/{P}/{path}", data=data)
        assert refused.status_code == status and message in refused.text
        assert (balance(cafe, "a"), balance(cafe, "b")) == before
    form = {"reason": " known  family ", "key": f"{key}-{held['id']}", "csrf": csrf}
    approved = owner.post(f"/staff/{P}/referrals/{held['id']}/approve", data=form,
                          follow_redirects=False)
    assert approved.headers["location"] == f"/staff/{P}/referrals?decided={held['id']}"
    # The purchase is past its pending days (0): approving pays both sides at once.
    stored = referrals.get(cafe, P, held["id"])
    assert (stored["status"], stored["decided_reason"]) == ("paid", "known family (by owner)")
    assert postings_of(held["id"]) == [("a", 100), ("b", 40)]
    assert (balance(cafe, "a"), balance(cafe, "b")) == ((150, 6), (120, 6))
    shown = owner.get(approved.headers["location"])
    assert f"Referral {held['id']} is now paid." in shown.text
    # The same form again answers the same; a new form finds it decided; nothing changes.
    replay = owner.post(f"/staff/{P}/referrals/{held['id']}/approve", data=form,
                        follow_redirects=False)
    assert replay.status_code == 303
    late = owner.post(f"/staff/{P}/referrals/{held['id']}/reject",
                      data={"key": "late-1", "csrf": csrf})
    assert late.status_code == 409 and "no longer waiting for review" in late.text
    assert (balance(cafe, "a"), balance(cafe, "b")) == ((150, 6), (120, 6))
    assert referrals.get(cafe, P, held["id"])["status"] == "paid"
    rejected = owner.post(f"/staff/{P}/referrals/{other['id']}/reject",
                          data={"reason": "", "key": "reject-c", "csrf": csrf},
                          follow_redirects=False)
    assert rejected.status_code == 303
    assert referrals.get(cafe, P, other["id"])["status"] == "rejected"
    assert referrals.get(cafe, P, other["id"])["decided_reason"] == "by owner"
    assert postings_of(other["id"]) == [] and balance(cafe, "c")[0] == 50
    assert "No referrals." in owner.get(f"/staff/{P}/referrals").text
    paid = owner.get(f"/staff/{P}/referrals", params={"status": "paid"})
    assert f'id="referral-{held["id"]}"' in paid.text
    with cafe.connect() as conn:
        statuses = sorted(conn.execute(sa.select(tr.referrals.c.status)).scalars())
    assert statuses == ["paid", "rejected"]
    assert_journal_ok(cafe)


def test_coupons_page_batches_their_codes_and_giving_uses_back(cafe: sa.Engine) -> None:
    members.upsert_member(cafe, P, "m1", {})
    owner = signed_in(cafe, "owner", "owner-password")
    page = owner.get(f"/staff/{P}/coupons")
    csrf, key = hidden(page.text, "csrf"), hidden(page.text, "key")
    assert '<option value="cny">Chinese New Year</option>' in page.text  # batch coupons only
    for data, status, message in [
        ({"coupon": "cny", "count": "0"}, 422, "A field is missing or invalid."),
        ({"coupon": "cny", "count": "many"}, 422, "A field is missing or invalid."),
        ({"coupon": "welcome10", "count": "3"}, 422, "A field is missing or invalid."),
        ({"coupon": "nope", "count": "3"}, 404, "There is no coupon with this code."),
        ({"coupon": "cny", "count": "3", "prefix": "NO-WAY"}, 422, "<code>prefix</code>"),
    ]:
        refused = owner.post(f"/staff/{P}/coupons/batches",
                             data={**data, "key": f"b-{data}", "csrf": csrf})
        assert refused.status_code == status and message in refused.text, data
        assert batch_count(cafe) == 0
    form = {"coupon": "cny", "count": "4", "prefix": "cny", "key": key, "csrf": csrf}
    made = owner.post(f"/staff/{P}/coupons/batches", data=form, follow_redirects=False)
    batch = made.headers["location"].split("batch=")[1]
    again = owner.post(f"/staff/{P}/coupons/batches", data=form, follow_redirects=False)
    assert again.headers["location"] == made.headers["location"] and batch_count(cafe) == 1
    export = owner.get(f"/staff/{P}/coupons/batches/{batch}.csv")
    assert export.headers["content-disposition"] == f'attachment; filename="{batch}.csv"'
    rows = list(csv.reader(io.StringIO(export.text)))
    assert rows[0] == ["code", "coupon", "batch", "status"] and len(rows) == 5
    assert all(r[0].startswith("CNY") and len(r[0]) == 13 and r[1:] == ["cny", batch, "unused"]
               for r in rows[1:])
    assert owner.get(f"/staff/{P}/coupons/batches/cpb_nope.csv").status_code == 404
    # One code used at the till: RM 8.00 off.
    coupons.redeem(cafe, P, {"code": rows[1][0], "member": "m1", "amount": "20.00",
                             "order_id": "o-1"}, "use-1")
    shown = owner.get(f"/staff/{P}/coupons")
    cny = re.search(r'<tr id="coupon-cny">(.*?)</tr>', shown.text, re.S)
    assert cny is not None
    cells = re.findall(r'<td class="num">([^<]*)</td>', cny.group(1))
    assert cells == ["1 / 100", "0", "RM 8.00"]
    assert "4 codes in batches" in cny.group(1)
    assert re.search(rf"<td class=\"num\">4</td><td class=\"num\">1</td><td><a href=\"/staff/"
                     rf"{P}/coupons/batches/{batch}.csv\"", shown.text)
    # Giving the use back: refused for an unknown order, then done once.
    unknown = owner.post(f"/staff/{P}/coupons/release",
                         data={"order_id": "o-9", "key": "r-0", "csrf": csrf})
    assert unknown.status_code == 404
    assert "This order has no coupon use to give back." in unknown.text
    assert coupon_rows(cafe) == [("cny", rows[1][0], "m1", "o-1", "8.0000", False)]
    release = {"order_id": "o-1", "code": rows[1][0].lower(), "key": "r-1", "csrf": csrf}
    done = owner.post(f"/staff/{P}/coupons/release", data=release, follow_redirects=False)
    assert done.headers["location"] == f"/staff/{P}/coupons?released=1"
    assert coupon_rows(cafe) == [("cny", rows[1][0], "m1", "o-1", "8.0000", True)]
    replay = owner.post(f"/staff/{P}/coupons/release", data=release, follow_redirects=False)
    assert replay.headers["location"] == f"/staff/{P}/coupons?released=1"
    shown = owner.get(f"/staff/{P}/coupons?released=1")
    assert "Coupon uses given back: 1." in shown.text
    cny = re.search(r'<tr id="coupon-cny">(.*?)</tr>', shown.text, re.S)
    assert cny is not None
    assert re.findall(r'<td class="num">([^<]*)</td>', cny.group(1)) == [
        "0 / 100", "1", "RM 0.00"]
    # the code can be used again
    assert coupons.validate(cafe, P, {"code": rows[1][0], "member": "m1",
                                      "amount": "20.00"})["discount"] == "8.00"


def test_campaigns_page_shows_state_budget_and_cost(cafe: sa.Engine,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(growth_pages, "utc_now", lambda: at("2027-11-15T12:00:00+08:00"))
    for member in ("a", "b"):
        members.upsert_member(cafe, P, member, {"enrolled_at": "2027-10-01T09:00:00+08:00"})
    for event, member, when, amount in (("e1", "a", "2027-11-02T10:00:00+08:00", "12.00"),
                                        ("e2", "b", "2027-11-03T10:00:00+08:00", "30.00"),
                                        ("e3", "a", "2027-11-04T10:00:00+08:00", "5.00")):
        events.ingest_event(cafe, P, {"id": event, "type": "purchase", "member": member,
                                      "order_id": event, "occurred_at": when,
                                      "amount": amount})
    owner = signed_in(cafe, "owner", "owner-password")
    page = owner.get(f"/staff/{P}/campaigns", params={"from": "2027-11-01",
                                                      "to": "2027-11-30"})
    assert page.status_code == 200

    def row(campaign: str) -> tuple[str, list[str]]:
        found = re.search(rf'<tr id="campaign-{campaign}">(.*?)</tr>', page.text, re.S)
        assert found is not None
        state = re.search(r'<span class="state state-([a-z]+)">', found.group(1))
        assert state is not None
        return state.group(1), re.findall(r'<td class="num">([^<]*)</td>', found.group(1))

    # 20 Beans each for a's RM 12.00 and b's RM 30.00 (a's RM 5.00 is below RM 10.00):
    # budget 40 of 1,000, 2 awards, 2 members; cost 40 x RM 0.01; spend per member
    # (17.00 + 30.00) / 2.
    assert row("double-eleven") == ("running", ["40 / 1,000", "2", "2", "40", "RM 0.40",
                                                "RM 23.50"])
    assert row("cny-2026") == ("ended", ["0", "0", "0", "0", "RM 0.00", "–"])
    assert row("review-thanks") == ("running", ["0", "0", "0", "0", "RM 0.00", "–"])
    assert "Feb 1, 2026 – Feb 28, 2026" in page.text
    bad = owner.get(f"/staff/{P}/campaigns", params={"from": "1900-01-01",
                                                     "to": "1900-02-01"})
    assert bad.status_code == 422 and "A field is missing or invalid." in bad.text


def test_reports_page_tables_and_downloads(cafe: sa.Engine) -> None:
    for member, enrolled in (("a", "2027-01-05T09:00:00+08:00"),
                             ("b", "2027-02-01T09:00:00+08:00")):
        members.upsert_member(cafe, P, member, {"enrolled_at": enrolled})
    for event, member, when, amount in (("e1", "a", "2027-02-03T10:00:00+08:00", "10.00"),
                                        ("e2", "a", "2027-02-10T10:00:00+08:00", "20.00"),
                                        ("e3", "b", "2027-02-11T10:00:00+08:00", "5.50"),
                                        ("e4", "b", "2027-03-02T10:00:00+08:00", "8.00")):
        events.ingest_event(cafe, P, {"id": event, "type": "purchase", "member": member,
                                      "order_id": event, "occurred_at": when,
                                      "amount": amount})
    redemptions.redeem(cafe, P, {"member": "a", "points": 40}, "pay",
                       clock=lambda: at("2027-02-12T10:00:00+08:00"))
    owner = signed_in(cafe, "owner", "owner-password")
    query = {"from": "2027-02-01", "to": "2027-03-31", "grain": "month"}
    page = owner.get(f"/staff/{P}/reports", params=query)
    assert page.status_code == 200

    def table(name: str) -> list[list[str]]:
        found = re.search(rf'<table id="{name}">.*?<tbody>(.*?)</tbody>', page.text, re.S)
        assert found is not None
        return [re.findall(r"<t[hd][^>]*>([^<]*)</t[hd]>", r)
                for r in re.findall(r"<tr>(.*?)</tr>", found.group(1), re.S)]

    # February: 3 purchases by 2 members, a twice: repeat rate 50%, RM 35.50, RM 11.83 each.
    assert table("sales") == [
        ["Feb 1, 2027", "3", "2", "1", "50%", "RM 35.50", "RM 11.83", "RM 0.00"],
        ["Mar 1, 2027", "1", "1", "0", "0%", "RM 8.00", "RM 8.00", "RM 0.00"]]
    # Issued in February: b's welcome 50 + 10 + 20 + 5 = 85, a redeemed 40; outstanding at
    # the end of February: a 50 + 30 - 40 = 40, b 50 + 5 = 55; March adds 8.
    assert table("points") == [
        ["Feb 1, 2027", "85", "40", "0", "0", "47.1%", "0%", "95", "RM 0.95"],
        ["Mar 1, 2027", "8", "0", "0", "0", "0%", "0%", "103", "RM 1.03"]]
    assert table("members") == [["Feb 1, 2027", "1", "2", "0", "0%"],
                                ["Mar 1, 2027", "0", "2", "0", "0%"]]
    assert table("coupon-uses") == [["Nothing in this period."]]
    assert table("rfm")[0][1] in ("1", "2")
    assert sum(int(r[1]) for r in table("rfm")) == 2
    # Downloads: the HTML report and the CSV exports, for the same period.
    report = owner.get(f"/staff/{P}/reports/report.html", params=query)
    assert report.headers["content-disposition"] == (
        f'attachment; filename="{P}-report-2027-02-01-2027-03-31.html"')
    assert "<h1>web-cafe</h1>" in report.text and "2027-02-01 to 2027-03-31, by month" in \
        report.text
    sales = owner.get(f"/staff/{P}/reports/metrics.csv", params=query)
    assert sales.headers["content-disposition"] == (
        f'attachment; filename="{P}-metrics-2027-02-01-2027-03-31.csv"')
    lines = list(csv.DictReader(io.StringIO(sales.text)))
    assert [(r["period"], r["purchases"], r["member_sales"]) for r in lines] == [
        ("2027-02-01", "3", "35.50"), ("2027-03-01", "1", "8.00")]
    journal = owner.get(f"/staff/{P}/reports/journal.csv", params=query)
    assert journal.status_code == 200 and len(journal.text.strip().splitlines()) == 1 + 7
    assert owner.get(f"/staff/{P}/reports/secrets.csv").status_code == 404
    bad = owner.get(f"/staff/{P}/reports", params={"from": "1900-01-01", "to": "1900-01-31"})
    assert bad.status_code == 422 and "A field is missing or invalid." in bad.text


def test_what_if_of_a_draft_in_the_programme_editor(cafe: sa.Engine) -> None:
    for member in ("a", "b"):
        members.upsert_member(cafe, P, member, {"enrolled_at": "2027-01-05T09:00:00+08:00"})
    for event, member, when, lines in (
            ("e1", "a", "2027-02-03T10:00:00+08:00", [("CAKE", "pastry", "8.50"),
                                                      ("LATTE", "coffee", "12.00")]),
            ("e2", "b", "2027-02-10T10:00:00+08:00", [("LATTE", "coffee", "30.00")])):
        events.ingest_event(cafe, P, {"id": event, "type": "purchase", "member": member,
                                      "order_id": event, "occurred_at": when, "lines": [
                                          {"sku": sku, "category": cat, "quantity": 1,
                                           "amount": amount} for sku, cat, amount in lines]})
    owner = signed_in(cafe, "owner", "owner-password")
    page = owner.get(f"/staff/{P}/programme")
    assert 'name="whatif_from" type="date" value="2027-01-12"' in page.text  # 30 days
    assert 'name="whatif_to" type="date" value="2027-02-10"' in page.text
    csrf = hidden(page.text, "csrf")
    draft = insights.version_yaml(cafe, P, 1)
    assert draft is not None
    head, tail = draft.split("id: pastry-bonus")
    changed = head + "id: pastry-bonus" + tail.replace("rate: '1'", "rate: '3'", 1)
    before = balance(cafe, "a"), balance(cafe, "b")
    answer = owner.post(f"/staff/{P}/programme", data={
        "draft": changed, "action": "whatif", "whatif_from": "2027-02-01",
        "whatif_to": "2027-02-28", "csrf": csrf})
    assert answer.status_code == 200, answer.text

    def cells(row_id: str) -> list[str]:
        found = re.search(rf'<tr id="{row_id}">(.*?)</tr>', answer.text, re.S)
        assert found is not None
        return re.findall(r'<td class="num">([^<]*)</td>', found.group(1))

    # live: 20 + 8 (pastry) + 30 = 58; draft: pastry at 3 a ringgit, 20 + 25 + 30 = 75
    assert cells("whatif-points") == ["58", "75"]
    assert cells("whatif-liability") == ["RM 0.58", "RM 0.75"]
    assert "2 events of 2 members" in answer.text
    assert ("Members who would earn differently: 1; who would end in another tier: 0."
            in answer.text)
    assert "<span class=\"add\">+  rate: &#39;3&#39;</span>" in answer.text  # the draft's diff
    assert (balance(cafe, "a"), balance(cafe, "b")) == before  # nothing is written
    too_long = owner.post(f"/staff/{P}/programme", data={
        "draft": changed, "action": "whatif", "whatif_from": "2027-01-01",
        "whatif_to": "2027-06-30", "csrf": csrf})
    assert too_long.status_code == 422 and "<code>to</code>" in too_long.text
    no_date = owner.post(f"/staff/{P}/programme", data={
        "draft": changed, "action": "whatif", "whatif_from": "soon", "whatif_to": "",
        "csrf": csrf})
    assert no_date.status_code == 422 and "<code>whatif_from</code>" in no_date.text
    assert [v["version"] for v in insights.versions(cafe, P)] == [1]


def test_portal_shows_the_referral_link(cafe: sa.Engine) -> None:
    browser = portal(cafe, "m1", "m1@example.com")
    home = browser.get(f"/portal/{P}/")
    code = referrals.code_for(cafe, P, "m1")["code"]
    assert f'<a href="https://web-cafe.example/join?ref={code}" id="referral-link">' in home.text
    assert f'<code class="referral-code" id="referral-code">{code}</code>' in home.text
    assert "Friends who joined: 0 · rewarded: 0" in home.text
    members.upsert_member(cafe, P, "m2", {})
    referrals.link(cafe, P, {"code": code, "member": "m2"}, "link-m2")
    home = browser.get(f"/portal/{P}/", headers={"accept-language": "id"})
    assert "Teman yang bergabung: 1 · diberi hadiah: 0" in home.text
    assert referrals.code_for(cafe, P, "m1")["code"] == code  # the same code every time
