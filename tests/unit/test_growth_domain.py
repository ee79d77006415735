"""The pure rules of referrals, coupons, surveys and donations: no database, exact values."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from setia.domain import coupons as c
from setia.domain import donations as dn
from setia.domain import referrals as r
from setia.domain import surveys as sv
from setia.domain.errors import InvalidField, InvalidProgramme
from setia.domain.ledger import Posting
from setia.domain.programme import validate_document
from tests.growth_programme import GROWTH


@pytest.mark.parametrize(("email", "normalised"), [
    ("Rina.Tan+shop@Gmail.com", "rinatan@gmail.com"),
    ("r.i.n.a.tan@googlemail.com", "rinatan@gmail.com"),
    ("rina.tan+x@example.com", "rina.tan@example.com"),
    ("RINA@Example.COM", "rina@example.com"),
    ("+tag@example.com", None),
    ("not-an-email", None),
    (None, None),
])
def test_emails_are_normalised_with_gmail_dots_and_tags(email: str | None,
                                                        normalised: str | None) -> None:
    assert r.normalise_email(email) == normalised


@pytest.mark.parametrize(("phone", "normalised"), [
    ("+60 12-345 6789", "60123456789"),
    ("0060123456789", "60123456789"),
    ("012-345 6789", "60123456789"),
    ("(03) 2345 6789", "60323456789"),
    ("", None),
])
def test_phones_are_normalised_to_international_digits(phone: str, normalised: str) -> None:
    assert r.normalise_phone(phone, "60") == normalised


def test_local_phones_without_a_country_code_stay_as_digits() -> None:
    assert r.normalise_phone("012-345 6789", None) == "0123456789"


def test_guard_reasons_list_every_guard_that_tripped() -> None:
    config = validate_document(GROWTH).referrals
    assert config is not None
    assert r.guard_reasons(config, self_referral=False, referrer_count=1,
                           ip_count_today=1) == []
    assert r.guard_reasons(config, self_referral=True, referrer_count=2, ip_count_today=5) == [
        "self-referral: the same email or phone as the referrer",
        "referrer cap: 2 referral(s) this month already (at most 2)",
        "IP cap: 5 referral(s) from this IP today already (at most 2)"]


def test_referrer_cap_periods_start_in_local_time() -> None:
    local = datetime(2027, 3, 17, 15, 30, tzinfo=UTC)  # a Wednesday
    assert r.referrer_period_start("day", local) == datetime(2027, 3, 17, tzinfo=UTC)
    assert r.referrer_period_start("week", local) == datetime(2027, 3, 15, tzinfo=UTC)
    assert r.referrer_period_start("month", local) == datetime(2027, 3, 1, tzinfo=UTC)
    assert r.referrer_period_start("year", local) == datetime(2027, 1, 1, tzinfo=UTC)
    assert r.referrer_period_start("lifetime", local) is None


def coupon(**fields: object) -> c.Coupon:
    return c.Coupon.model_validate({"id": "x", "discount": {"percent_off": 15}, **fields})


def test_a_coupon_is_valid_on_its_from_and_until_days_and_not_outside_them() -> None:
    # Given a coupon for March 2027, both days included (docs/programme.md, coupons)
    march = coupon(**{"from": "2027-03-01", "until": "2027-03-31"})
    # Then the day before the first is refused, the first and the last day are valid
    with pytest.raises(c.CouponNotActive) as early:
        c.check_window(march, date(2027, 2, 28))
    assert (early.value.detail, early.value.field) == ("coupon x starts on 2027-03-01", "code")
    c.check_window(march, date(2027, 3, 1))
    c.check_window(march, date(2027, 3, 31))
    # and the day after the last is refused
    with pytest.raises(c.CouponNotActive) as late:
        c.check_window(march, date(2027, 4, 1))
    assert (late.value.detail, late.value.field) == ("coupon x ended on 2027-03-31", "code")


def test_a_coupon_for_new_members_takes_a_member_until_n_days_after_enrolment() -> None:
    # Given a coupon for members enrolled in the last 30 days, and a member enrolled on
    # 1 March 2027 at 10:00 UTC
    welcome = coupon(new_members_days=30)
    enrolled = datetime(2027, 3, 1, 10, tzinfo=UTC)
    facts = c.MemberFacts(purchases=0, enrolled_at=enrolled, uses_of_coupon=0)
    # Then she may use it on day 30, to the very instant (31 March 10:00)
    c.check_member(welcome, facts, enrolled + timedelta(days=29))
    c.check_member(welcome, facts, enrolled + timedelta(days=30))
    # but not a second later, nor on day 31
    for now in (enrolled + timedelta(days=30, seconds=1), enrolled + timedelta(days=31)):
        with pytest.raises(c.CouponNewMembersOnly) as refused:
            c.check_member(welcome, facts, now)
        assert (refused.value.detail, refused.value.field) == (
            "coupon x is for members enrolled in the last 30 days", "member")


def test_percent_discounts_round_half_up_and_respect_the_cap() -> None:
    basket = c.Basket(Decimal("33.30"))
    # 15% of 33.30 = 4.995 -> 5.00
    assert c.discount_for(coupon(), basket, 2) == Decimal("5.00")
    assert c.discount_for(coupon(discount={"percent_off": 15, "max_off": "4.50"}), basket,
                          2) == Decimal("4.50")
    # JPY has no minor unit: 15% of 333 = 49.95 -> 50
    assert c.discount_for(coupon(), c.Basket(Decimal(333)), 0) == Decimal(50)


def test_an_amount_off_never_exceeds_the_lines_it_applies_to() -> None:
    lines = (c.BasketLine("LATTE", "coffee", Decimal("3.00")),
             c.BasketLine("CAKE", "pastry", Decimal("9.00")))
    fixed = coupon(discount={"amount_off": "5.00"}, categories=["coffee"])
    assert c.discount_for(fixed, c.Basket(Decimal("12.00"), lines), 2) == Decimal("3.00")
    with pytest.raises(c.CouponNoMatchingLines):
        c.discount_for(coupon(categories=["tea"]), c.Basket(Decimal("12.00"), lines), 2)
    with pytest.raises(c.CouponMinSpend):
        c.discount_for(coupon(min_spend="12.01"), c.Basket(Decimal("12.00"), lines), 2)


def test_the_discount_is_spread_over_the_lines_it_applies_to() -> None:
    lines = (c.BasketLine("LATTE", "coffee", Decimal("10.00")),
             c.BasketLine("CAKE", "pastry", Decimal("9.00")),
             c.BasketLine("MOCHA", "coffee", Decimal("20.00")))
    # 1.00 over coffee 10.00 and 20.00: 0.333... and 0.666..., floored 0.33 and 0.66; the
    # cent left goes to the larger remainder (MOCHA, .0066 against LATTE's .0033)
    assert c.net_lines(coupon(categories=["coffee"]), lines, Decimal("1.00"), 2) == (
        Decimal("9.67"), Decimal("9.00"), Decimal("19.33"))
    # without categories every line takes its share: 3.90 of 39.00 is 10% each
    assert c.net_lines(coupon(), lines, Decimal("3.90"), 2) == (
        Decimal("9.00"), Decimal("8.10"), Decimal("18.00"))
    # a tie of remainders: the earlier line takes the unit
    pair = (c.BasketLine("A", None, Decimal(5)), c.BasketLine("B", None, Decimal(5)))
    assert c.net_lines(coupon(), pair, Decimal(1), 0) == (Decimal(4), Decimal(5))
    assert c.net_lines(coupon(), pair, Decimal(0), 0) == (Decimal(5), Decimal(5))


def test_batch_codes_are_the_prefix_and_ten_crockford_characters() -> None:
    codes = c.batch_codes("NY", 3, bytes(range(21)))
    # bytes 0..6 = 0x00010203040506: bits 1, 2, 8, 10, 18, 24, 25, 33, 40 set. In groups
    # of 5 bits, least significant first: 6, 8, 1, 8, 16 (G), 1, 8, 0, 1, 0
    assert codes[0] == "NY" + "6818G18010"
    assert all(len(code) == 12 and set(code[2:]) <= set(c.CODE_ALPHABET) for code in codes)
    assert c.batch_codes("", 2, b"\x00" * 14) == ["0000000000"]  # a duplicate is dropped


def test_nps_and_rating_figures() -> None:
    assert sv.nps_figures([10, 9, 8, 7, 6, 0]) == {
        "scores": 6, "promoters": 2, "passives": 2, "detractors": 2, "nps": "0.0"}
    assert sv.nps_figures([9, 9, 5]) == {
        "scores": 3, "promoters": 2, "passives": 0, "detractors": 1, "nps": "33.3"}
    assert sv.nps_figures([])["nps"] is None
    assert sv.rating_figures([5, 4, 1], 5) == {"ratings": 3, "average_rating": "3.33",
                                               "satisfaction": "66.7"}
    assert sv.rating_figures([10, 9, 8], 10)["satisfaction"] == "66.7"


def test_answers_are_checked_against_their_questions() -> None:
    survey = sv.Survey.model_validate(GROWTH["surveys"][0])
    parsed = sv.parse_answers(survey, {"recommend": 0, "taste": 5})
    assert (parsed.nps, parsed.rating, parsed.answers) == (0, 5, {"recommend": 0, "taste": 5})
    with pytest.raises(InvalidField) as refused:
        sv.parse_answers(survey, {"recommend": 0, "taste": 5, "comment": 7})
    assert refused.value.field == "answers.comment"


def test_donation_amounts_and_posting_tags() -> None:
    cause = dn.Cause(id="zoo", name="Zoo", value_per_point=Decimal("0.005"))
    assert dn.amount(cause, 101, 2) == Decimal("0.51")  # 0.505 rounds half up
    postings = [Posting("redeem", "available", "redeemed", 100),
                Posting("earn", "issued", "available", 5)]
    assert dn.tag(postings, "zoo") == 1
    assert [p.rule_id for p in postings] == ["donation:zoo", None]


def test_the_programme_file_sections_are_checked_across_fields() -> None:
    bad = {**GROWTH,
           "rewards": [*GROWTH["rewards"],
                       {"id": "give-x", "name": "X", "cost": 5, "donation": {"cause": "nope"}}],
           "referrals": {**GROWTH["referrals"], "link": "https://x.example/",
                         "referrer": {"points": 5, "reward": "free-latte"},
                         "referee": {"reward": "nope"}},
           "coupons": [*GROWTH["coupons"],
                       {"id": "welcome10", "code": "WELCOME10",
                        "discount": {"amount_off": "1.001", "percent_off": 5}}],
           "surveys": [{"id": "s", "name": "S", "questions": [
               {"id": "q", "kind": "text", "text": "?"}, {"id": "q", "kind": "nps", "text": "?"}]}]}
    with pytest.raises(InvalidProgramme) as refused:
        validate_document(bad)
    assert refused.value.errors == [
        ("referrals.link", "must contain {code}"),
        ("referrals.referrer", "exactly one of points or reward"),
        ("referrals.referee.reward", "unknown reward 'nope'"),
        ("coupons[3].id", "duplicate coupon id 'welcome10'"),
        ("coupons[3].code", "duplicate coupon code 'WELCOME10'"),
        ("coupons[3].discount", "exactly one of amount_off or percent_off"),
        ("coupons[3].discount.amount_off", "more decimals than MYR allows"),
        ("surveys[0].questions[1].id", "duplicate question id 'q'"),
        ("rewards[2].donation.cause", "unknown cause 'nope'"),
    ]


def test_a_referral_reward_must_give_a_voucher() -> None:
    # A donation reward gives none: paying the referral would have failed in run-due
    bad = {**GROWTH, "referrals": {**GROWTH["referrals"],
                                   "referee": {"reward": "donate-mercy"}}}
    with pytest.raises(InvalidProgramme) as refused:
        validate_document(bad)
    assert refused.value.errors == [
        ("referrals.referee.reward", "reward 'donate-mercy' gives no voucher")]
