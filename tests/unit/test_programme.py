"""The programme file (CONTRACT.md section 1): validation with every error at once, by path."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from setia.domain.errors import InvalidProgramme
from setia.domain.programme import compile_programme, validate_document

LEVELS = [
    {"id": "member", "name": "Member", "threshold": 0},
    {"id": "gold", "name": "Gold", "threshold": 350, "multiplier": 1.25},
    {"id": "platinum", "name": "Platinum", "threshold": 1000, "multiplier": 1.5},
]


def document(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": "kopi-setia",
        "name": "Kopi Setia Rewards",
        "currency": "MYR",
        "timezone": "Asia/Kuala_Lumpur",
        "tiers": {"metric": "spend", "window": "calendar_year", "levels": LEVELS},
        "earn": [{"id": "base", "on": "purchase", "rate": 1}],
    }
    doc.update(changes)
    return doc


def errors_of(doc: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(InvalidProgramme) as info:
        validate_document(doc)
    assert info.value.type == "invalid-programme"
    assert info.value.field == info.value.errors[0][0]
    return info.value.errors


def paths_of(doc: dict[str, Any]) -> list[str]:
    return [path for path, _ in errors_of(doc)]


def test_a_valid_document_compiles_into_a_programme_with_its_version():
    # Given a small valid document
    # When it is validated and compiled as version 3
    programme = compile_programme(validate_document(document()), version=3)
    # Then it keeps its id, currency, version and levels
    assert programme.id == "kopi-setia"
    assert programme.currency == "MYR"
    assert programme.version == 3
    assert str(programme.tz) == "Asia/Kuala_Lumpur"
    assert programme.level("gold").multiplier == Decimal("1.25")
    assert [rule.id for rule in programme.rules_for("purchase")] == ["base"]


def test_an_unknown_tier_id_falls_back_to_the_first_level():
    programme = compile_programme(validate_document(document()), version=1)
    assert programme.level("diamond").id == "member"
    assert programme.level(None).id == "member"


def test_a_non_ascending_threshold_names_its_level_index():
    # Given platinum at 300, below gold's 350
    levels = [dict(level) for level in LEVELS]
    levels[2]["threshold"] = 300
    doc = document(tiers={"levels": levels})
    # Then the error points at the third level's threshold
    errors = errors_of(doc)
    assert [path for path, _ in errors] == ["tiers.levels[2].threshold"]
    assert "ascending" in errors[0][1]


def test_an_equal_threshold_is_not_ascending():
    levels = [dict(level) for level in LEVELS]
    levels[1]["threshold"] = 0
    assert paths_of(document(tiers={"levels": levels})) == ["tiers.levels[1].threshold"]


def test_the_first_level_must_start_at_zero():
    levels = [dict(level) for level in LEVELS]
    levels[0]["threshold"] = 10
    assert paths_of(document(tiers={"levels": levels})) == ["tiers.levels[0].threshold"]


def test_duplicate_level_ids_are_refused():
    levels = [dict(level) for level in LEVELS]
    levels[2]["id"] = "gold"
    assert paths_of(document(tiers={"levels": levels})) == ["tiers.levels[2].id"]


def test_an_unknown_key_is_reported_with_its_path():
    doc = document(bonus=True)
    doc["earn"][0]["colour"] = "red"
    errors = errors_of(doc)
    assert sorted(errors) == [("bonus", "unknown key"), ("earn[0].colour", "unknown key")]


def test_a_rule_with_both_rate_and_points_is_refused():
    doc = document(earn=[{"id": "base", "on": "purchase", "rate": 1, "points": 5}])
    errors = errors_of(doc)
    assert errors == [("earn[0]", "exactly one of rate or points is required")]


def test_a_rule_with_neither_rate_nor_points_is_refused():
    doc = document(earn=[{"id": "base", "on": "purchase"}])
    assert errors_of(doc) == [("earn[0]", "exactly one of rate or points is required")]


def test_a_rule_for_an_unknown_tier_names_the_tier_entry():
    doc = document(earn=[{"id": "vip", "on": "purchase", "rate": 2, "tiers": ["gold", "silver"]}])
    assert errors_of(doc) == [("earn[0].tiers[1]", "unknown tier 'silver'")]


def test_a_reward_for_an_unknown_tier_names_the_tier_entry():
    doc = document(rewards=[{"id": "cup", "name": "Cup", "cost": 10, "tiers": ["diamond"]}])
    assert errors_of(doc) == [("rewards[0].tiers[0]", "unknown tier 'diamond'")]


def test_a_condition_that_does_not_compile_is_reported_on_its_rule():
    doc = document(earn=[
        {"id": "base", "on": "purchase", "rate": 1},
        {"id": "shop", "on": "purchase", "rate": 1, "condition": "shop.channel == 'app'"},
    ])
    errors = errors_of(doc)
    assert [path for path, _ in errors] == ["earn[1].condition"]
    assert "shop" in errors[0][1]


def test_a_condition_with_a_syntax_error_is_reported_on_its_rule():
    doc = document(earn=[{"id": "x", "on": "purchase", "rate": 1, "condition": "event.channel =="}])
    assert paths_of(doc) == ["earn[0].condition"]


def test_rolling_expiry_needs_its_months():
    doc = document(points={"expiry": {"policy": "rolling"}})
    assert errors_of(doc) == [("points.expiry.months", "required when policy is rolling")]


def test_inactivity_expiry_needs_its_months():
    doc = document(points={"expiry": {"policy": "inactivity"}})
    assert errors_of(doc) == [("points.expiry.months", "required when policy is inactivity")]


def test_no_expiry_takes_no_months():
    doc = document(points={"expiry": {"policy": "none", "months": 6}})
    assert paths_of(doc) == ["points.expiry.months"]


def test_an_unknown_currency_is_refused():
    errors = errors_of(document(currency="XYZ"))
    assert errors == [("currency", "'XYZ' is not an ISO 4217 currency")]


def test_a_lower_case_currency_is_refused():
    assert paths_of(document(currency="myr")) == ["currency"]


def test_an_unknown_timezone_is_refused():
    assert paths_of(document(timezone="Asia/Atlantis")) == ["timezone"]


def test_a_min_amount_with_three_decimals_is_refused_for_myr():
    doc = document(earn=[{"id": "first", "on": "purchase", "points": 100, "min_amount": "10.005"}])
    assert errors_of(doc) == [("earn[0].min_amount", "more decimals than MYR allows")]


def test_a_min_amount_with_two_decimals_is_accepted_for_myr():
    doc = document(earn=[{"id": "first", "on": "purchase", "points": 100, "min_amount": "10.50"}])
    model = validate_document(doc)
    assert model.earn[0].min_amount == Decimal("10.50")


def test_a_min_amount_with_decimals_is_refused_for_jpy():
    doc = document(currency="JPY",
                   earn=[{"id": "first", "on": "purchase", "points": 100, "min_amount": "1000.5"}])
    assert paths_of(doc) == ["earn[0].min_amount"]


def test_rolling_months_window_needs_window_months():
    doc = document(tiers={"window": "rolling_months", "levels": LEVELS})
    assert paths_of(doc) == ["tiers.window_months"]


def test_calendar_year_window_takes_no_window_months():
    doc = document(tiers={"window": "calendar_year", "window_months": 12, "levels": LEVELS})
    assert paths_of(doc) == ["tiers.window_months"]


def test_duplicate_rule_ids_are_refused():
    doc = document(earn=[{"id": "base", "on": "purchase", "rate": 1},
                         {"id": "base", "on": "purchase", "rate": 2}])
    assert paths_of(doc) == ["earn[1].id"]


def test_until_before_from_is_refused():
    doc = document(earn=[{"id": "w", "on": "purchase", "rate": 1,
                          "from": "2027-12-31", "until": "2027-01-01"}])
    assert paths_of(doc) == ["earn[0].until"]


def test_an_empty_filter_list_is_refused():
    doc = document(earn=[{"id": "w", "on": "purchase", "rate": 1, "categories": []}])
    assert paths_of(doc) == ["earn[0].categories"]


def test_first_purchase_only_applies_to_purchase_rules():
    doc = document(earn=[{"id": "w", "on": "review", "points": 5, "first_purchase": True}])
    assert paths_of(doc) == ["earn[0].first_purchase"]


def test_an_unknown_limit_period_is_refused():
    doc = document(earn=[{"id": "r", "on": "review", "points": 5,
                          "limit": {"count": 3, "per": "fortnight"}}])
    assert paths_of(doc) == ["earn[0].limit.per"]


def test_a_voucher_needs_exactly_one_benefit():
    doc = document(rewards=[{"id": "cup", "name": "Cup", "cost": 10,
                             "voucher": {"free_item": "cup", "percent_off": 10}}])
    assert paths_of(doc) == ["rewards[0].voucher"]


def test_a_document_that_is_not_a_mapping_is_refused():
    with pytest.raises(InvalidProgramme) as info:
        validate_document(["kopi-setia"])
    assert info.value.errors == [("(root)", "the programme must be a mapping of keys to values")]


def test_every_cross_field_error_is_reported_at_once():
    # Given one document with seven independent mistakes
    levels = [dict(level) for level in LEVELS]
    levels[2]["threshold"] = 300
    doc = document(
        currency="MYR",
        points={"expiry": {"policy": "rolling"}},
        tiers={"levels": levels},
        earn=[
            {"id": "both", "on": "purchase", "rate": 1, "points": 5},
            {"id": "neither", "on": "purchase"},
            {"id": "vip", "on": "purchase", "rate": 2, "tiers": ["silver"]},
            {"id": "cel", "on": "purchase", "rate": 1, "condition": "shop.x == 1"},
            {"id": "first", "on": "purchase", "points": 100, "min_amount": "10.005"},
        ],
        rewards=[{"id": "cup", "name": "Cup", "cost": 10, "tiers": ["diamond"]}],
    )
    # Then all of them come back in one InvalidProgramme, each with its path
    assert sorted(paths_of(doc)) == sorted([
        "points.expiry.months",
        "tiers.levels[2].threshold",
        "earn[0]",
        "earn[1]",
        "earn[2].tiers[0]",
        "earn[3].condition",
        "earn[4].min_amount",
        "rewards[0].tiers[0]",
    ])


def test_an_unknown_key_does_not_hide_the_other_errors():
    # Given a typo'd key and, elsewhere, a non-ascending threshold
    levels = [dict(level) for level in LEVELS]
    levels[2]["threshold"] = 300
    doc = document(tiers={"levels": levels}, expiry_months=6)
    # Then both are reported at once
    assert sorted(paths_of(doc)) == ["expiry_months", "tiers.levels[2].threshold"]


def test_a_bad_value_does_not_hide_errors_elsewhere():
    # Given a negative rate on one rule and an unknown tier on another
    doc = document(earn=[{"id": "base", "on": "purchase", "rate": -1},
                         {"id": "vip", "on": "purchase", "points": 5, "tiers": ["silver"]}])
    # Then both are reported, and the rule whose rate was dropped is not also
    # blamed for having neither rate nor points
    errors = errors_of(doc)
    assert [path for path, _ in errors] == ["earn[0].rate", "earn[1].tiers[0]"]


def test_field_errors_alone_are_reported_when_a_key_is_missing():
    # Given a rule without an id, and a non-ascending threshold
    levels = [dict(level) for level in LEVELS]
    levels[2]["threshold"] = 300
    doc = document(tiers={"levels": levels}, earn=[{"on": "purchase", "rate": 1}])
    # Then the missing key is reported (cross-field checks need a complete document)
    assert paths_of(doc) == ["earn[0].id"]

