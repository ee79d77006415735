"""Rewards and vouchers: voucher codes, who may redeem what and when."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from setia.domain.errors import (
    InvalidField,
    RewardLimitReached,
    RewardNotAvailable,
    RewardNotForTier,
    UnknownReward,
    VoucherExpired,
    VoucherUsed,
)
from setia.domain.programme import Programme, compile_programme, validate_document
from setia.domain.rewards import (
    CODE_ALPHABET,
    check_redeemable,
    check_usable,
    find_reward,
    normalise_code,
    voucher_benefit,
    voucher_code,
    voucher_expires_at,
)

MYT = timezone(timedelta(hours=8))


def programme() -> Programme:
    doc: dict[str, Any] = {
        "id": "kopi-setia", "name": "Kopi Setia", "currency": "MYR",
        "timezone": "Asia/Kuala_Lumpur",
        "tiers": {"levels": [
            {"id": "member", "name": "Member", "threshold": 0},
            {"id": "gold", "name": "Gold", "threshold": 350, "multiplier": 1.25},
            {"id": "platinum", "name": "Platinum", "threshold": 1000, "multiplier": 1.5},
        ]},
        "rewards": [
            {"id": "free-latte", "name": "Free latte", "cost": 150,
             "voucher": {"free_item": "latte", "valid_days": 30}},
            {"id": "rm10-off", "name": "RM10 off", "cost": 400,
             "voucher": {"amount_off": "10.00"}},
            {"id": "ten-percent-off", "name": "10% off", "cost": 250,
             "voucher": {"percent_off": 10}},
            {"id": "tumbler-2027", "name": "Limited tumbler", "cost": 800, "stock": 100,
             "per_member_limit": 1, "tiers": ["gold", "platinum"],
             "from": "2027-03-01", "until": "2027-03-31"},
        ],
    }
    return compile_programme(validate_document(doc), version=1)


# -- voucher codes --------------------------------------------------------------------------

def test_a_voucher_code_is_twelve_characters_of_crockford_base32():
    code = voucher_code(bytes.fromhex("0123456789abcdef"))
    assert len(code) == 12
    assert set(code) <= set(CODE_ALPHABET)


def test_the_code_alphabet_has_no_i_l_o_or_u():
    assert len(CODE_ALPHABET) == 32
    assert not set("ILOU") & set(CODE_ALPHABET)


def test_a_voucher_code_is_deterministic_for_given_bytes():
    # 0x0123456789ABCDEF: its low 60 bits in 5-bit groups, least significant first
    assert voucher_code(bytes.fromhex("0123456789abcdef")) == "FFKQT4YC5T82"
    assert voucher_code(bytes.fromhex("0123456789abcdef")) == "FFKQT4YC5T82"
    assert voucher_code(bytes(8)) == "000000000000"
    assert voucher_code(bytes.fromhex("0000000000000001")) == "100000000000"
    assert voucher_code(bytes.fromhex("ffffffffffffffff")) == "ZZZZZZZZZZZZ"


def test_only_the_first_eight_bytes_count():
    assert voucher_code(bytes.fromhex("0123456789abcdef" + "ff" * 8)) == "FFKQT4YC5T82"


def test_normalise_code_accepts_what_a_cashier_types():
    assert normalise_code(" ffkq-t4yc-5t82 ") == "FFKQT4YC5T82"
    assert normalise_code("FFKQ T4YC 5T82") == "FFKQT4YC5T82"


def test_normalise_code_reads_o_as_zero_and_i_l_as_one():
    assert normalise_code("o0iIlL") == "001111"


# -- finding and redeeming rewards ----------------------------------------------------------

def test_find_reward_by_id():
    assert find_reward(programme(), "free-latte").cost == 150


def test_an_unknown_reward_is_refused():
    with pytest.raises(UnknownReward) as info:
        find_reward(programme(), "free-cake")
    assert info.value.field == "reward"


def test_a_reward_that_is_not_a_string_is_refused():
    with pytest.raises(InvalidField) as info:
        find_reward(programme(), 7)
    assert info.value.field == "reward"


def tumbler_check(now: datetime, tier_id: str = "gold", redeemed: int = 0) -> None:
    prog = programme()
    check_redeemable(prog, find_reward(prog, "tumbler-2027"), tier_id=tier_id, now=now,
                     redeemed_by_member=redeemed)


def test_a_reward_within_its_window_for_the_right_tier_is_redeemable():
    tumbler_check(datetime(2027, 3, 15, 12, tzinfo=MYT))
    tumbler_check(datetime(2027, 3, 15, 12, tzinfo=MYT), tier_id="platinum")


def test_a_reward_before_its_from_date_is_not_available():
    with pytest.raises(RewardNotAvailable) as info:
        tumbler_check(datetime(2027, 2, 28, 23, 59, tzinfo=MYT))
    assert info.value.field == "reward"


def test_the_reward_window_is_in_the_programme_timezone():
    # 2027-02-28 16:00 UTC is 2027-03-01 00:00 in Kuala Lumpur: open
    tumbler_check(datetime(2027, 2, 28, 16, 0, tzinfo=UTC))
    # 2027-03-31 16:00 UTC is 2027-04-01 00:00 in Kuala Lumpur: closed
    with pytest.raises(RewardNotAvailable):
        tumbler_check(datetime(2027, 3, 31, 16, 0, tzinfo=UTC))


def test_the_until_date_is_inclusive():
    tumbler_check(datetime(2027, 3, 31, 23, 59, tzinfo=MYT))
    with pytest.raises(RewardNotAvailable):
        tumbler_check(datetime(2027, 4, 1, 0, 0, tzinfo=MYT))


def test_a_reward_for_other_tiers_is_refused():
    with pytest.raises(RewardNotForTier) as info:
        tumbler_check(datetime(2027, 3, 15, tzinfo=MYT), tier_id="member")
    assert info.value.field == "reward"
    assert info.value.status == 403


def test_a_reward_at_its_per_member_limit_is_refused():
    with pytest.raises(RewardLimitReached) as info:
        tumbler_check(datetime(2027, 3, 15, tzinfo=MYT), redeemed=1)
    assert info.value.field == "reward"


def test_the_window_is_checked_before_the_tier_and_the_limit():
    with pytest.raises(RewardNotAvailable):
        tumbler_check(datetime(2027, 4, 15, tzinfo=MYT), tier_id="member", redeemed=1)
    with pytest.raises(RewardNotForTier):
        tumbler_check(datetime(2027, 3, 15, tzinfo=MYT), tier_id="member", redeemed=1)


def test_a_reward_without_restrictions_is_always_redeemable():
    prog = programme()
    check_redeemable(prog, find_reward(prog, "free-latte"), tier_id="member",
                     now=datetime(2030, 1, 1, tzinfo=MYT), redeemed_by_member=99)


# -- vouchers -------------------------------------------------------------------------------

def test_a_voucher_expires_valid_days_after_it_was_issued():
    prog = programme()
    issued = datetime(2027, 3, 1, 10, tzinfo=MYT)
    assert voucher_expires_at(find_reward(prog, "free-latte"), issued) == datetime(
        2027, 3, 31, 10, tzinfo=MYT)
    # valid_days defaults to 30
    assert voucher_expires_at(find_reward(prog, "rm10-off"), issued) == datetime(
        2027, 3, 31, 10, tzinfo=MYT)


def test_a_reward_without_voucher_has_no_expiry():
    prog = programme()
    assert voucher_expires_at(find_reward(prog, "tumbler-2027"),
                              datetime(2027, 3, 1, tzinfo=MYT)) is None


def test_a_voucher_is_usable_until_just_before_it_expires():
    expires = datetime(2027, 3, 31, 10, tzinfo=MYT)
    check_usable(expires_at=expires, used_at=None, now=expires - timedelta(seconds=1),
                 code="FFKQT4YC5T82")
    with pytest.raises(VoucherExpired) as info:
        check_usable(expires_at=expires, used_at=None, now=expires, code="FFKQT4YC5T82")
    assert info.value.field == "code"


def test_a_used_voucher_is_refused_even_after_expiry():
    expires = datetime(2027, 3, 31, 10, tzinfo=MYT)
    with pytest.raises(VoucherUsed) as info:
        check_usable(expires_at=expires, used_at=datetime(2027, 3, 2, tzinfo=MYT),
                     now=expires + timedelta(days=1), code="FFKQT4YC5T82")
    assert info.value.field == "code"


def test_voucher_benefits():
    prog = programme()
    assert voucher_benefit(find_reward(prog, "free-latte")) == {
        "kind": "free_item", "free_item": "latte"}
    assert voucher_benefit(find_reward(prog, "rm10-off")) == {
        "kind": "amount_off", "amount_off": "10.00"}
    assert voucher_benefit(find_reward(prog, "ten-percent-off")) == {
        "kind": "percent_off", "percent_off": "10"}
