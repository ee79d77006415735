"""The web pages through HTTP (in process), on SQLite and PostgreSQL: cookies, CSRF,
roles, the cashier's writes (idempotent by the form's key, nothing changed by a refusal),
the dashboard's figures, the programme editor, the portal's data download."""

from __future__ import annotations

import json
import re
from datetime import date

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from setia.adapters.db import tables as t
from setia.entrypoints.api.app import create_app
from setia.service import events, insights, members, redemptions, staff
from tests.browser.web_server import WEB_CAFE
from tests.conftest import assert_journal_ok, at, load_programme

P = "web-cafe"


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
    ]:
        assert owner.post(path, data=data).status_code == 403
        assert owner.post(path, data={**data, "csrf": "wrong"}).status_code == 403
    assert balance(cafe, "m1") == before
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
    for page in ("dashboard", "members", "programme", "rewards"):
        assert till.get(f"/staff/{P}/{page}").status_code == 403
    owner = signed_in(cafe, "owner", "owner-password")
    for page in ("cashier", "dashboard", "members", "programme", "rewards"):
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
    assert browser.get("/", follow_redirects=False).headers["location"] == "/staff/"
