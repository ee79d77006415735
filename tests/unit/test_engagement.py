"""The pure rules of campaigns, stamp cards and paid memberships."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import ROUND_DOWN, Decimal
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from setia.domain import engagement as rules
from setia.domain.engagement_sections import Audience, Campaign, MembershipPlan, StampCard
from setia.domain.events import Event, Line
from setia.domain.refunds import OrderLine, spread

KL = ZoneInfo("Asia/Kuala_Lumpur")


def card(**fields: object) -> StampCard:
    return StampCard.model_validate({"id": "c", "name": "C", "target": 3,
                                     "reward": {"points": 1}, **fields})


def test_a_hold_out_of_a_tenth_leaves_out_close_to_a_tenth_and_always_the_same_members():
    members = [f"cust-{n}" for n in range(20_000)]
    held = [m for m in members if rules.in_holdout("kopi", "raya", m, Decimal("0.1"))]
    assert 1_800 < len(held) < 2_200
    assert held == [m for m in members if rules.in_holdout("kopi", "raya", m, Decimal("0.1"))]
    other = {m for m in members if rules.in_holdout("kopi", "cny", m, Decimal("0.1"))}
    assert len(other & set(held)) < 400  # independent between campaigns: about 1% of 20,000
    assert not any(rules.in_holdout("kopi", "raya", m, Decimal(0)) for m in members[:100])


def test_grants_stop_at_the_budget_and_the_members_cap():
    assert rules.grant_within(100, budget=450, used=400, per_member=None, member_used=0) == 50
    assert rules.grant_within(100, budget=450, used=450, per_member=None, member_used=0) == 0
    assert rules.grant_within(100, budget=None, used=0, per_member=150, member_used=100) == 50
    assert rules.grant_within(100, budget=None, used=0, per_member=150, member_used=170) == 0


def test_win_back_needs_an_earlier_purchase_at_least_n_days_before():
    audience = Audience(lapsed_days=60)
    now = datetime(2027, 9, 13, 9, tzinfo=KL)

    def facts(last: datetime | None) -> rules.AudienceFacts:
        return rules.AudienceFacts(tier_id="member", attributes={}, birthday=None,
                                   enrolled_at=datetime(2027, 1, 1, tzinfo=UTC),
                                   last_purchase_at=last)

    assert not rules.audience_matches(audience, facts(None), now)
    assert rules.audience_matches(audience, facts(datetime(2027, 7, 15, 9, tzinfo=KL)), now)
    assert not rules.audience_matches(audience, facts(datetime(2027, 7, 15, 9, 1, tzinfo=KL)),
                                      now)


def test_a_rate_campaign_is_recomputed_on_what_is_left_and_never_gives_more():
    campaign = Campaign.model_validate({"id": "x", "name": "X", "rate": "1.5",
                                        "categories": ["coffee"]})
    purchase = Event(id="e", type="purchase", member="m",
                     occurred_at=datetime(2027, 1, 1, tzinfo=UTC), amount=Decimal("30.00"),
                     lines=(Line("K", "coffee", 2, Decimal("20.00")),
                            Line("T", "tea", 1, Decimal("10.00"))))
    points, why = rules.campaign_points(campaign, purchase, {}, "Beans")
    assert (points, why) == (30, "1.5 × 20.00 = 30 Beans (X)")
    left = (Line("K", "coffee", 2, Decimal("5.50")), Line("T", "tea", 1, Decimal("10.00")))
    assert rules.campaign_points_after_refund(campaign, 30, purchase, left, Decimal("15.50"),
                                              {}) == 8  # floor(1.5 x 5.50)
    assert rules.campaign_points_after_refund(campaign, 20, purchase, purchase.lines,
                                              Decimal("30.00"), {}) == 20  # capped award


def test_a_fixed_bonus_stays_whole_while_a_refund_leaves_exactly_the_min_amount():
    # Given a 50-point campaign for purchases of at least 20.00, on a 25.00 purchase
    campaign = Campaign.model_validate({"id": "x", "name": "X", "points": 50,
                                        "min_amount": "20.00"})
    purchase = Event(id="e", type="purchase", member="m",
                     occurred_at=datetime(2027, 1, 1, tzinfo=UTC), amount=Decimal("25.00"))
    # When a refund leaves exactly 20.00, the order still qualifies: the bonus stays whole
    assert rules.campaign_still_qualifies(campaign, Decimal("20.00"))
    assert rules.campaign_points_after_refund(campaign, 50, purchase, (), Decimal("20.00"),
                                              {}) == 50
    # and a cent less, it does not: the bonus goes whole
    assert not rules.campaign_still_qualifies(campaign, Decimal("19.99"))
    assert rules.campaign_points_after_refund(campaign, 50, purchase, (), Decimal("19.99"),
                                              {}) == 0


def test_stamps_of_a_partly_refunded_line_keep_the_quantity_still_paid_for():
    coffee = card(count="quantity", categories=["coffee"])
    line = Line("K", "coffee", 3, Decimal("15.00"))
    assert rules.stamps_left(coffee, [(line, Decimal("5.00"))], Decimal("10.00"),
                             Decimal("15.00"), 2) == 2
    assert rules.stamps_left(coffee, [(line, Decimal("4.99"))], Decimal("10.01"),
                             Decimal("15.00"), 2) == 2
    assert rules.stamps_left(coffee, [(line, Decimal("5.01"))], Decimal("9.99"),
                             Decimal("15.00"), 2) == 1
    visits = card(count="visits")
    assert rules.stamps_left(visits, [(line, Decimal("14.99"))], Decimal("0.01"),
                             Decimal("15.00"), 2) == 1
    assert rules.stamps_left(visits, [(line, Decimal("15.00"))], Decimal(0),
                             Decimal("15.00"), 2) == 0


LATTES = Line("LATTE", "coffee", 2, Decimal("10.00"))
FREE_COFFEE = Line("FREE", "coffee", 1, Decimal("0.00"))
BUN = Line("BUN", "pastry", 1, Decimal("5.00"))


def purchase_of(*lines: Line, amount: Decimal | None = None) -> Event:
    if amount is None:
        amount = sum((line.amount for line in lines), Decimal(0))
    return Event(id="e", type="purchase", member="m", occurred_at=datetime(2027, 1, 1, tzinfo=KL),
                 amount=amount, lines=lines)


def test_a_free_line_keeps_its_stamps_when_another_line_is_refunded():
    # Given a coffee card, and 2 lattes, a free coffee and a bun: 3 stamps
    coffee = card(count="quantity", categories=["coffee"])
    assert rules.stamps_for(coffee, purchase_of(LATTES, FREE_COFFEE, BUN), 2) == 3
    # When 1.00 of the bun is refunded, then all of the lattes
    bun_in_part = [(LATTES, Decimal(0)), (FREE_COFFEE, Decimal(0)), (BUN, Decimal("1.00"))]
    lattes_too = [(LATTES, Decimal("10.00")), (FREE_COFFEE, Decimal(0)), (BUN, Decimal("1.00"))]
    # Then the free coffee still counts: 3 stamps, then 1
    assert rules.stamps_left(coffee, bun_in_part, Decimal("14.00"), Decimal("15.00"), 2) == 3
    assert rules.stamps_left(coffee, lattes_too, Decimal("4.00"), Decimal("15.00"), 2) == 1
    # and nothing once the whole order is refunded
    everything = [(LATTES, Decimal("10.00")), (FREE_COFFEE, Decimal(0)), (BUN, Decimal("5.00"))]
    assert rules.stamps_left(coffee, everything, Decimal(0), Decimal("15.00"), 2) == 0


def test_a_visit_by_category_is_lost_when_its_matching_lines_are_refunded_in_full():
    # Given a visits card for coffee, and a coffee and a bun bought: 1 visit
    visits = card(count="visits", categories=["coffee"])
    kopi = Line("KOPI", "coffee", 1, Decimal("5.00"))
    assert rules.stamps_for(visits, purchase_of(kopi, BUN), 2) == 1
    # When the coffee is refunded in part, the visit stays; in full, it goes
    assert rules.stamps_left(visits, [(kopi, Decimal("4.99")), (BUN, Decimal(0))],
                             Decimal("5.01"), Decimal("10.00"), 2) == 1
    assert rules.stamps_left(visits, [(kopi, Decimal("5.00")), (BUN, Decimal(0))],
                             Decimal("5.00"), Decimal("10.00"), 2) == 0


def test_a_refund_below_the_cards_min_amount_takes_the_stamps_back():
    # Given a card for purchases of at least 20.00, and 25.00 bought: 1 stamp
    big = card(count="visits", min_amount="20")
    line = Line("K", "coffee", 5, Decimal("25.00"))
    assert rules.stamps_for(big, purchase_of(line), 2) == 1
    # When 5.00 is refunded, 20.00 is left: the stamp stays; 20.00 refunded: it goes
    assert rules.stamps_left(big, [(line, Decimal("5.00"))], Decimal("20.00"),
                             Decimal("25.00"), 2) == 1
    assert rules.stamps_left(big, [(line, Decimal("20.00"))], Decimal("5.00"),
                             Decimal("25.00"), 2) == 0
    # the same on a quantity card, and on an order without lines
    quantity = card(count="quantity", min_amount="20")
    assert rules.stamps_left(quantity, [(line, Decimal("4.00"))], Decimal("21.00"),
                             Decimal("25.00"), 2) == 4
    assert rules.stamps_left(quantity, [(line, Decimal("20.00"))], Decimal("5.00"),
                             Decimal("25.00"), 2) == 0
    assert rules.stamps_left(big, [], Decimal("5.00"), Decimal("25.00"), 2) == 0


def test_a_card_stamps_a_purchase_of_exactly_its_min_amount():
    # Given a card for purchases of at least 20.00
    big = card(count="visits", min_amount="20.00")
    exactly = purchase_of(Line("K", "coffee", 4, Decimal("20.00")))
    short = purchase_of(Line("K", "coffee", 4, Decimal("19.99")))
    # Then a purchase of 20.00 counts, and gives its stamp; one of 19.99 does not count
    assert rules.card_applies(big, exactly, exactly.occurred_at)
    assert rules.stamps_for(big, exactly, 2) == 1
    assert not rules.card_applies(big, short, short.occurred_at)


def test_an_order_refunded_in_full_keeps_no_stamp_whatever_the_card_counts():
    for count in ("events", "visits", "quantity", "spend"):
        assert rules.stamps_left(card(count=count), [(BUN, Decimal("5.00"))], Decimal(0),
                                 Decimal("5.00"), 2) == 0, count
        assert rules.stamps_left(card(count=count), [], Decimal(0), Decimal("5.00"), 2) == 0


def _bought_with(line: Line, refunded: Decimal) -> Line | None:
    """What is left of a line, said another way: the most units whose price is still paid."""
    left = line.amount - refunded
    if line.amount == 0:
        return line
    if left == 0:
        return None
    quantity = max(k for k in range(line.quantity + 1) if k * line.amount <= left * line.quantity)
    return Line(line.sku, line.category, quantity, left)


CENT = Decimal("0.01")
line_amounts = st.one_of(st.just(0), st.integers(1, 5_000)).map(lambda c: Decimal(c) * CENT)
stamp_cards = st.builds(
    lambda count, categories, skus, minimum: card(count=count, categories=categories, skus=skus,
                                                  min_amount=minimum),
    st.sampled_from(["quantity", "visits", "spend", "events"]),
    st.sampled_from([None, ["coffee"]]), st.sampled_from([None, ["S0"]]),
    st.one_of(st.none(), st.integers(0, 100).map(Decimal)))


@given(stamp_cards, st.data())
def test_what_is_left_of_an_order_earns_the_stamps_it_would_earn_as_a_purchase(card_, data):
    lines = tuple(
        Line(f"S{i}", data.draw(st.sampled_from(["coffee", "pastry", None])),
             data.draw(st.integers(1, 5)), data.draw(line_amounts))
        for i in range(data.draw(st.integers(1, 4))))
    amount = sum((line.amount for line in lines), Decimal(0))
    purchase = purchase_of(*lines)
    earned = rules.stamps_for(card_, purchase, 2) \
        if rules.card_applies(card_, purchase, purchase.occurred_at) else 0
    refunded = {line.sku: Decimal(0) for line in lines}
    for _ in range(data.draw(st.integers(1, 3))):
        order = [OrderLine(ln.sku, ln.category, ln.quantity, ln.amount, refunded[ln.sku])
                 for ln in lines]
        left = sum((ol.left for ol in order), Decimal(0))
        if left <= 0:
            break
        if data.draw(st.booleans()):  # by amount, spread as the refund service spreads it
            share = Decimal(data.draw(st.integers(1, 100))) / 100
            total = max((left * share).quantize(CENT, ROUND_DOWN), CENT)
            now = spread(total, order, 2)
        else:  # by lines, each a share of what is left of it
            now = {ol.sku: (ol.left * Decimal(data.draw(st.integers(0, 100))) / 100)
                   .quantize(CENT, ROUND_DOWN) for ol in order}
        for sku, amount in now.items():
            refunded[sku] += amount
        pairs = [(ln, refunded[ln.sku]) for ln in lines]
        order_left = amount - sum(refunded.values(), Decimal(0))
        rest = purchase_of(*(kept for ln, r in pairs if (kept := _bought_with(ln, r))),
                           amount=order_left)
        expected = rules.stamps_for(card_, rest, 2) \
            if order_left > 0 and rules.card_applies(card_, rest, rest.occurred_at) else 0
        got = rules.stamps_left(card_, pairs, order_left, amount, 2)
        assert got == expected
        assert got <= earned  # a refund never gives stamps the purchase did not


def test_completions_restart_or_stop_at_one():
    assert rules.completions_due(card(), 10, 3) == 3
    assert rules.completions_due(card(repeat=False), 10, 3) == 1
    assert rules.completions_due(card(), -2, 3) == 0


def test_stamp_periods_are_local_months_quarters_and_years():
    moment = datetime(2027, 3, 31, 16, 30, tzinfo=UTC).astimezone(KL)  # 1 April local
    assert rules.stamp_period(card(period="quarter"), moment) == "2027-Q2"
    assert rules.stamp_period(card(period="month"), moment) == "2027-04"
    assert rules.stamp_period(card(period="year"), moment) == "2027"
    assert rules.stamp_period(card(), moment) == "all"


def test_monthly_vouchers_one_at_the_start_of_each_month_of_the_plan():
    plan = MembershipPlan.model_validate({"id": "p", "name": "P", "fee": "49.00", "months": 3,
                                          "monthly_voucher": {"free_item": "latte"}})
    starts = datetime(2027, 1, 31, 10, tzinfo=KL)
    ends = rules.membership_ends_at(plan, starts, KL)
    assert ends == datetime(2027, 4, 30, 10, tzinfo=KL)

    def due(moment: datetime) -> int:
        return rules.monthly_vouchers_due(plan, starts, ends, moment, KL)

    assert due(datetime(2027, 1, 31, 9, 59, tzinfo=KL)) == 0
    assert due(starts) == 1
    assert due(datetime(2027, 2, 28, 10, tzinfo=KL)) == 2
    assert due(datetime(2027, 12, 1, tzinfo=KL)) == 3


def test_the_membership_multiplier_scales_earn_rules_only():
    plan = MembershipPlan.model_validate({"id": "p", "name": "Plus", "fee": "1", "months": 1,
                                          "multiplier": "1.5"})
    points, why = rules.membership_points(plan, {"base": 41, "campaign:x": 100}, "Beans")
    assert (points, why) == (20, "Plus ×1.5 on 41 Beans: +20 Beans")
