"""The web pages in a real headless Chromium (Debian's /usr/bin/chromium, driven by
Playwright): the cashier enrols a walk-in customer and records a purchase, the member
signs in with the link emailed to a real SMTP server, sees the new points and their
referral link and redeems a reward, the cashier takes the voucher, the owner adjusts the
balance and sees it in the activity and saves a programme change; then the cashier
records a purchase with a coupon, and the owner looks at campaigns, makes a batch of
coupon codes, approves a referral from the review queue, reads and downloads the report
and runs a what-if of a draft. Every page is photographed at phone and desktop width and
checked by axe-core for serious or critical violations.

Screenshots go to a temporary folder; with SETIA_UPDATE_SCREENSHOTS=1 they replace the
ones in docs/screenshots/ that the README shows.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterator
from pathlib import Path

import playwright.sync_api as playwright  # a pinned dependency: missing, this fails
import pytest
import sqlalchemy as sa

from setia.adapters.db.engine import make_engine
from setia.service import members, referrals
from tests.browser.web_server import (
    CASHIER_PASSWORD,
    OWNER_PASSWORD,
    create_user,
    link_in,
    load_programme,
    smtp_server,
    web_server,
)
from tests.conftest import assert_journal_ok
from tests.e2e.api_server import assert_setia_check_ok

CHROMIUM = "/usr/bin/chromium"
AXE = Path(__file__).parent / "vendor" / "axe.min.js"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}
PROGRAM = "web-cafe"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make venv` installs Debian's chromium package")
    with playwright.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=CHROMIUM,
                                          args=["--no-sandbox", "--disable-gpu"])
        yield launched
        launched.close()


def shots_dir(tmp_path: Path) -> Path:
    if os.environ.get("SETIA_UPDATE_SCREENSHOTS") == "1":
        DOCS.mkdir(parents=True, exist_ok=True)
        return DOCS
    return tmp_path


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", header[16:24])
    return width, height


class Pages:
    """Screenshots at both widths and the axe-core check, for each page visited."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.taken: list[str] = []

    def check(self, page: object, name: str, focus: str | None = None) -> None:
        """axe-core on the whole page, then a screenshot at each width (scrolled to
        ``focus``, a CSS selector, when the part to show is further down)."""
        page.add_script_tag(path=str(AXE))  # type: ignore[attr-defined]
        results = page.evaluate(  # type: ignore[attr-defined]
            "async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
            ".map(v => ({id: v.id, impact: v.impact, nodes: v.nodes.map(n => n.target)}))")
        serious = [v for v in results if v["impact"] in ("serious", "critical")]
        assert serious == [], f"{name}: {serious}"
        for label, size in (("desktop", DESKTOP), ("phone", PHONE)):
            page.set_viewport_size(size)  # type: ignore[attr-defined]
            if focus is not None:
                page.locator(focus).evaluate(  # type: ignore[attr-defined]
                    "element => element.scrollIntoView()")
            path = self.folder / f"{name}-{label}.png"
            page.screenshot(path=str(path), full_page=False)  # type: ignore[attr-defined]
            assert png_size(path)[0] == size["width"]
            self.taken.append(path.name)
        page.set_viewport_size(DESKTOP)  # type: ignore[attr-defined]


def sign_in(page: object, base: str, username: str, password: str) -> None:
    page.goto(f"{base}/staff/login")  # type: ignore[attr-defined]
    page.get_by_label("Username").fill(username)  # type: ignore[attr-defined]
    page.get_by_label("Password").fill(password)  # type: ignore[attr-defined]
    page.get_by_role("button", name="Sign in").click()  # type: ignore[attr-defined]


def test_cashier_member_and_owner_in_a_real_browser(browser: object, tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'web.db'}"
    load_programme(db_url, tmp_path)
    create_user(db_url, "owner", "owner", OWNER_PASSWORD)
    create_user(db_url, "till1", "cashier", CASHIER_PASSWORD)
    pages = Pages(shots_dir(tmp_path))
    with smtp_server() as (mailbox, smtp_port), web_server(db_url, tmp_path, smtp_port) as web:
        base = web.base_url
        till_context = browser.new_context(viewport=DESKTOP, bypass_csp=True,  # type: ignore[attr-defined]
                                           locale="en-GB")
        till = till_context.new_page()

        # 1. The cashier signs in (a wrong password first) and enrols a walk-in customer.
        till.goto(f"{base}/staff/login")
        pages.check(till, "staff-login")
        till.get_by_label("Username").fill("till1")
        till.get_by_label("Password").fill("not the password")
        till.get_by_role("button", name="Sign in").click()
        assert till.get_by_role("alert").inner_text().strip() == "Wrong username or password."
        sign_in(till, base, "till1", CASHIER_PASSWORD)
        assert till.url == f"{base}/staff/{PROGRAM}/cashier"
        cookie = next(c for c in till_context.cookies() if c["name"] == "setia_staff")
        assert cookie["httpOnly"] is True and cookie["sameSite"] == "Lax"
        till.get_by_label("Phone, member id or scanned card").fill("012-555 0101")
        till.keyboard.press("Enter")
        assert till.get_by_role("status").inner_text() == "No member found."
        assert till.get_by_label("Phone number").input_value() == "012-555 0101"
        pages.check(till, "cashier-find")
        till.get_by_label("Name (optional)").fill("Aisyah")
        till.get_by_label("Email (optional, for the member portal)").fill("aisyah@example.com")
        till.get_by_role("button", name="Enrol", exact=True).click()
        assert "Enrolled. Welcome!" in till.inner_text("main")
        member_id = till.url.split("/cashier/")[1].split("?")[0]
        assert re.fullmatch(r"w-[a-z0-9]{8,12}", member_id)
        assert till.inner_text("#balance") == "50 Beans"

        # 2. A purchase with lines: 60 base + 12 pastry bonus = 72, on top of the welcome 50.
        till.get_by_label("Amount (MYR)").fill("60.00")
        till.get_by_label("Lines (optional): SKU, category, quantity, amount — one per row").fill(
            "CAKE, pastry, 1, 12.00\nLATTE, coffee, 2, 48.00")
        till.get_by_role("button", name="Record purchase").click()
        assert till.inner_text("#earned") == "+72 Beans"
        assert till.inner_text("#balance") == "122 Beans"
        pages.check(till, "cashier-purchase")
        # The keyboard alone: skip link, then the amount field, then Enter records 5.00.
        till.goto(f"{base}/staff/{PROGRAM}/cashier/{member_id}")
        till.keyboard.press("Tab")
        assert till.evaluate("document.activeElement.textContent") == "Skip to content"
        till.keyboard.press("Enter")
        till.keyboard.press("Tab")
        assert till.evaluate("document.activeElement.id") == "amount"
        till.keyboard.type("5.00")
        till.keyboard.press("Enter")
        till.wait_for_selector("#earned")
        assert till.inner_text("#earned") == "+5 Beans"
        assert till.inner_text("#balance") == "127 Beans"

        # 3. The member asks for a sign-in link (phone width, Traditional Chinese browser).
        phone_context = browser.new_context(viewport=PHONE, bypass_csp=True,  # type: ignore[attr-defined]
                                            locale="zh-TW")
        phone = phone_context.new_page()
        phone.goto(f"{base}/portal/{PROGRAM}/signin")
        assert phone.get_attribute("html", "lang") == "zh-Hant"
        pages.check(phone, "portal-signin")
        phone.get_by_label("電子郵件地址").fill("aisyah@example.com")
        phone.get_by_role("button", name="寄送登入連結給我").click()
        assert phone.inner_text("#sent").startswith("若有會員使用此電子郵件地址")
        message = mailbox.wait_for(1)
        assert message["To"] == "aisyah@example.com"
        assert message["Subject"] == "您的 Web Cafe 登入連結"
        link = link_in(message)
        phone.goto(link)
        phone.get_by_role("button", name="登入").click()
        assert phone.url == f"{base}/portal/{PROGRAM}/"
        assert phone.inner_text("#balance") == "127"
        assert "再 RM 35.00 即可升級至 Gold" in phone.inner_text("main")
        pages.check(phone, "portal-home")
        # The link worked once: a second use is refused.
        phone.goto(link)
        phone.get_by_role("button", name="登入").click()
        assert "此登入連結已使用或已過期" in phone.get_by_role("alert").inner_text()
        phone.goto(f"{base}/portal/{PROGRAM}/")

        # 4. The member redeems the free latte (100): 27 left, a voucher with its QR.
        phone.get_by_role("button", name="兌換 Free latte").click()
        code = re.search(r"[A-Z0-9-]{6,}", phone.inner_text("#redeemed").split("是")[1]).group(0)
        assert phone.inner_text("#balance") == "27"
        assert phone.inner_text(".voucher-code") == code
        assert phone.locator(".vouchers svg").count() == 1
        # The member's referral link, with its QR code, to share.
        referral_code = phone.inner_text("#referral-code")
        assert re.fullmatch(r"[0-9A-Z]{8}", referral_code)
        assert phone.inner_text("#referral-link") == (
            f"https://web-cafe.example/join?ref={referral_code}")
        assert "已加入的朋友：0 · 已獲獎勵：0" in phone.inner_text("#referral")
        pages.check(phone, "portal-referral", focus="#referral")
        # English again, chosen in the profile, stays with the member.
        phone.get_by_label("語言", exact=True).last.select_option("en")
        phone.get_by_role("button", name="儲存").click()
        assert phone.get_attribute("html", "lang") == "en"
        assert "Saved." in phone.inner_text("main")

        # 5. The cashier takes the voucher; a second use is refused.
        till.goto(f"{base}/staff/{PROGRAM}/cashier?q={member_id}")
        assert till.url == f"{base}/staff/{PROGRAM}/cashier/{member_id}"
        till.get_by_label("Voucher code").fill(code)
        till.get_by_role("button", name="Use voucher").click()
        assert "Voucher accepted" in till.inner_text(".result")
        till.get_by_label("Voucher code").fill(code)
        till.get_by_role("button", name="Use voucher").click()
        assert till.get_by_role("alert").inner_text().startswith("This voucher was used already.")
        # A cashier may not open the owner's pages.
        till.goto(f"{base}/staff/{PROGRAM}/dashboard")
        assert till.inner_text("h1") == "Not allowed"

        # 6. The owner adjusts the balance with a reason and sees it in the activity.
        owner_context = browser.new_context(viewport=DESKTOP, bypass_csp=True,  # type: ignore[attr-defined]
                                            locale="en-GB")
        owner = owner_context.new_page()
        sign_in(owner, base, "owner", OWNER_PASSWORD)
        assert owner.url.startswith(f"{base}/staff/{PROGRAM}/dashboard")
        pages.check(owner, "dashboard")
        owner.goto(f"{base}/staff/{PROGRAM}/members?q=aisyah")
        owner.get_by_role("link", name=member_id).click()
        owner.get_by_label("Points (negative to remove)").fill("25")
        owner.get_by_label("Reason").fill("birthday cake was late")
        owner.get_by_role("button", name="Adjust balance").click()
        assert owner.inner_text("#available") == "52"
        first = owner.locator("#activity tbody tr").first.inner_text()
        assert "+25" in first and "birthday cake was late (by owner)" in first
        pages.check(owner, "member")
        owner.goto(f"{base}/staff/{PROGRAM}/rewards")
        assert "Free latte" in owner.inner_text("#rewards")
        pages.check(owner, "rewards")

        # 7. The programme editor: validate a draft, preview it on the member, save it.
        owner.goto(f"{base}/staff/{PROGRAM}/programme")
        draft = owner.get_by_label("Programme file (YAML)").input_value()
        head, tail = draft.split("id: pastry-bonus")
        owner.get_by_label("Programme file (YAML)").fill(
            head + "id: pastry-bonus" + tail.replace("rate: '1'", "rate: '2'", 1))
        owner.get_by_label("Member id").fill(member_id)
        owner.get_by_label("Amount", exact=True).fill("10.00")
        owner.get_by_label("Lines (optional): SKU, category, quantity, amount — one per row").fill(
            "CAKE, pastry, 1, 10.00")
        owner.get_by_role("button", name="Preview").click()
        assert owner.inner_text("#draft-valid") == "The draft is valid."
        assert owner.locator("#preview .big-number").all_inner_texts() == ["+20", "+30"]
        pages.check(owner, "programme")
        owner.get_by_role("button", name="Save as new version").click()
        assert owner.inner_text("#current-version") == "2"

        # 8. The cashier checks a coupon, then records the purchase with it: 10% of RM 40.00
        #    off, 36 Beans on the RM 36.00 paid (52 + 36 = 88).
        till.goto(f"{base}/staff/{PROGRAM}/cashier/{member_id}")
        till.get_by_label("Amount (MYR)").fill("40.00")
        till.get_by_label("Coupon code (optional)").fill("welcome10")
        till.get_by_role("button", name="Check coupon").click()
        assert till.inner_text("#discount") == "−RM 4.00"
        assert till.inner_text("#to-pay") == "RM 36.00"
        assert till.inner_text("#balance") == "52 Beans"  # nothing used yet
        till.get_by_role("button", name="Record purchase").click()
        assert till.inner_text("#discount") == "−RM 4.00"
        assert till.inner_text("#earned") == "+36 Beans"
        assert till.inner_text("#balance") == "88 Beans"
        pages.check(till, "cashier-coupon")
        till.get_by_label("Amount (MYR)").fill("30.00")
        till.get_by_label("Coupon code (optional)").fill("WELCOME10")
        till.get_by_role("button", name="Record purchase").click()
        assert till.get_by_role("alert").inner_text().startswith(
            "This member has used this coupon as often as allowed.")
        assert till.inner_text("#balance") == "88 Beans"

        # 9. Campaigns: the one of February 2026 is over.
        owner.goto(f"{base}/staff/{PROGRAM}/campaigns")
        assert owner.inner_text("#campaign-cny-2026 .state") == "ended"
        assert owner.locator("#campaigns tbody tr").count() == 3
        pages.check(owner, "campaigns")

        # 10. Coupons: a batch of five Chinese New Year codes; the till's WELCOME10 use.
        owner.goto(f"{base}/staff/{PROGRAM}/coupons")
        owner.get_by_label("Coupon", exact=True).select_option("cny")
        owner.get_by_label("Number of codes (at most 100,000)").fill("5")
        owner.get_by_label("Prefix (optional, up to 12 letters and digits)").fill("CNY")
        owner.get_by_role("button", name="Make codes").click()
        assert owner.inner_text("#made").startswith("Batch cpb_")
        assert owner.locator("#batches tbody tr").first.inner_text().split("\t")[3:5] == [
            "5", "0"]
        assert "WELCOME10" in owner.inner_text("#uses")
        assert "RM 4.00" in owner.inner_text("#coupon-welcome10")
        pages.check(owner, "coupons")

        # 11. The referral review queue: two friends share the referrer's mailbox.
        engine = make_engine(db_url)
        try:
            for friend in ("ref-owner", "ref-friend-1", "ref-friend-2"):
                members.upsert_member(engine, PROGRAM, friend,
                                      {"name": friend, "email": "sam@example.com"})
            referral_code = referrals.code_for(engine, PROGRAM, "ref-owner")["code"]
            held = [referrals.link(engine, PROGRAM, {"code": referral_code, "member": friend},
                                   f"link-{friend}")["id"]
                    for friend in ("ref-friend-1", "ref-friend-2")]
        finally:
            engine.dispose()
        owner.goto(f"{base}/staff/{PROGRAM}/referrals")
        assert owner.locator("#referrals > li").count() == 2
        owner.get_by_role("button", name=f"Approve referral {held[0]}").click()
        assert owner.inner_text("#decided") == f"Referral {held[0]} is now linked."
        assert owner.locator("#referrals > li").count() == 1
        pages.check(owner, "referrals")

        # 12. Reports for the default period, and the HTML report as a download.
        owner.goto(f"{base}/staff/{PROGRAM}/reports?grain=total")
        assert owner.locator("#sales tbody tr").count() == 1
        with owner.expect_download() as download:
            owner.get_by_role("link", name="The full report (HTML, with charts)").click()
        assert download.value.suggested_filename.startswith(f"{PROGRAM}-report-")
        assert "<h1>web-cafe</h1>" in Path(download.value.path()).read_text()
        pages.check(owner, "reports")

        # 13. What-if: pastry bonus at 3 a ringgit instead of 2, over the last 30 days.
        #     Only the first purchase had a pastry line (CAKE RM 12.00): 12 more Beans.
        owner.goto(f"{base}/staff/{PROGRAM}/programme")
        draft = owner.get_by_label("Programme file (YAML)").input_value()
        head, tail = draft.split("id: pastry-bonus")
        owner.get_by_label("Programme file (YAML)").fill(
            head + "id: pastry-bonus" + tail.replace("rate: '2'", "rate: '3'", 1))
        owner.get_by_role("button", name="What-if").click()
        live, changed = (int(cell.replace(",", "")) for cell in
                         owner.locator("#whatif-points td").all_inner_texts())
        assert changed - live == 12
        pages.check(owner, "programme-whatif", focus="#whatif")

        for context in (till_context, phone_context, owner_context):
            context.close()

    assert len(pages.taken) == 32
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            available = conn.execute(sa.text(
                "SELECT available FROM members WHERE id = :id"), {"id": member_id}).scalar_one()
            uses = conn.execute(sa.text("SELECT count(*) FROM coupon_uses")).scalar_one()
        assert (available, uses) == (88, 1)
        assert_journal_ok(engine)
    finally:
        engine.dispose()
    assert_setia_check_ok(db_url)
