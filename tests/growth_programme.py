"""The programme of the referral, coupon, survey and donation tests: ``growth-cafe``.

MYR, Asia/Kuala_Lumpur, no pending days, no expiry. Earning: base 1 point per
RM 1 of a purchase, welcome 50 on signup. Rewards: free-latte (150, a voucher),
donate-mercy (100 points given to the cause ``mercy``, worth RM 0.01 a point).

- referrals: a qualifying first purchase of at least RM 20.00, paid 14 days
  later: the referrer 300 points, the referee 150; at most 2 referrals per
  referrer a month and 2 per IP a day; local phone numbers are Malaysian (60).
- coupons: WELCOME10 (10% off, at most RM 15.00, minimum spend RM 20.00, once
  per member, 3 uses in total); FIRSTCUP (RM 5.00 off coffee lines, first
  purchase of a member enrolled in the last 30 days, not given back on refund);
  cny (a batch coupon: RM 8.00 off, 2027-01-20 to 2027-02-28).
- surveys: visit (nps 0-10, taste 1-5, comment text optional), 20 points once
  a month.
"""

from __future__ import annotations

from typing import Any

GROWTH: dict[str, Any] = {
    "id": "growth-cafe",
    "name": "Growth Cafe",
    "currency": "MYR",
    "timezone": "Asia/Kuala_Lumpur",
    "points": {"name": "Beans", "pending_days": 0, "expiry": {"policy": "none"}},
    "earn": [
        {"id": "base", "on": "purchase", "rate": 1},
        {"id": "welcome", "on": "signup", "points": 50},
    ],
    "rewards": [
        {"id": "free-latte", "name": "Free latte", "cost": 150,
         "voucher": {"free_item": "latte", "valid_days": 30}},
        {"id": "donate-mercy", "name": "Give 100 Beans to MERCY", "cost": 100,
         "donation": {"cause": "mercy"}},
    ],
    "causes": [
        {"id": "mercy", "name": "MERCY Malaysia", "value_per_point": "0.01"},
        {"id": "zoo", "name": "Zoo Negara", "value_per_point": "0.005"},
    ],
    "referrals": {
        "link": "https://growth.example/join?ref={code}",
        "min_purchase": "20.00",
        "pending_days": 14,
        "referrer": {"points": 300},
        "referee": {"points": 150},
        "max_per_referrer": {"count": 2, "per": "month"},
        "max_per_ip_per_day": 2,
        "phone_country_code": "60",
    },
    "coupons": [
        {"id": "welcome10", "code": "WELCOME10", "discount": {"percent_off": 10,
                                                             "max_off": "15.00"},
         "min_spend": "20.00", "per_member": 1, "max_uses": 3},
        {"id": "first-coffee", "code": "FIRSTCUP", "discount": {"amount_off": "5.00"},
         "first_purchase": True, "new_members_days": 30, "categories": ["coffee"],
         "release_on_refund": False},
        {"id": "cny", "discount": {"amount_off": "8.00"}, "from": "2027-01-20",
         "until": "2027-02-28"},
    ],
    "surveys": [
        {"id": "visit", "name": "How was your visit?",
         "questions": [
             {"id": "recommend", "kind": "nps", "text": "Would you recommend us?"},
             {"id": "taste", "kind": "rating", "scale": 5, "text": "How did it taste?"},
             {"id": "comment", "kind": "text", "text": "Anything else?", "required": False},
         ],
         "reward": {"points": 20, "limit": {"count": 1, "per": "month"}}},
    ],
}
