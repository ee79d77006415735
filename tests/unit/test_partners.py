"""Partner settlement in the pure domain: which points postings move value, and how much."""

from __future__ import annotations

from decimal import Decimal

import pytest

from setia.domain.partners import (
    PartnersConfig,
    Transfer,
    UnknownPartner,
    require_partner,
    transfer_for,
    value_e4,
)

VALUE = Decimal("0.0125")


@pytest.mark.parametrize(("code", "debit", "credit", "expected"), [
    ("earn", "issued", "available", Transfer("earn", "partner:roti", "coalition", 80, 10_000)),
    ("earn", "issued", "pending", Transfer("earn", "partner:roti", "coalition", 80, 10_000)),
    ("clawback", "available", "issued",
     Transfer("clawback", "coalition", "partner:roti", 80, 10_000)),
    ("clawback", "pending", "issued",
     Transfer("clawback", "coalition", "partner:roti", 80, 10_000)),
    ("redeem", "available", "redeemed",
     Transfer("redeem", "coalition", "partner:roti", 80, 10_000)),
    ("hold", "available", "reserved", Transfer("hold", "coalition", "partner:roti", 80, 10_000)),
    ("release", "reserved", "available",
     Transfer("release", "partner:roti", "coalition", 80, 10_000)),
    ("capture", "reserved", "redeemed", None),
    ("activate", "pending", "available", None),
    ("expire", "available", "expired", None),
    ("adjust", "adjustments", "available", None),
])
def test_which_postings_move_value(code, debit, credit, expected):
    # 80 points x 0.0125 = 1.0000 = 10,000 e4
    assert transfer_for(code, debit, credit, 80, "roti", VALUE) == expected


def test_value_is_exact_in_ten_thousandths():
    assert value_e4(3, Decimal("0.0033")) == 99
    assert value_e4(1, Decimal("1")) == 10_000


def test_require_partner():
    config = PartnersConfig.model_validate({"point_value": "0.01", "merchants": [
        {"id": "kopi", "name": "Kopi"}, {"id": "roti", "name": "Roti"}]})
    assert require_partner(config, "roti") == "roti"
    with pytest.raises(UnknownPartner) as caught:
        require_partner(config, "bakery")
    assert (caught.value.field, caught.value.detail) == (
        "partner", "no partner 'bakery'; the programme's partners are kopi, roti")
    with pytest.raises(UnknownPartner):
        require_partner(None, "roti")
    with pytest.raises(UnknownPartner):
        require_partner(config, "")
