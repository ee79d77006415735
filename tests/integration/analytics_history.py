"""A small hand-built history shared by the analytics tests (times in +08:00, 2027).

Programme "cafe": 1 point per RM 1, 10 points at signup, lots expire 2 months after
they are earned, Gold from RM 100 of spend in a calendar year (points x2), a coffee
for 20 points, cost per point RM 0.01, churn after 30 days.

- ann enrols 01-05, buys 40.00 (01-10, s1, pos) and 70.00 (01-25, s1, pos) -> Gold,
  then 20.00 at Gold (02-10, s2, app) = 40 points; redeems a coffee (20) on 02-12.
- bob enrols 01-20, buys 30.00 on 02-01 07:00 local (01-31 23:00 UTC: a February
  purchase), s2, app.
- cat enrols 02-03, buys 50.00 on 02-14 (s1, pos); 10.00 of it is refunded on 02-15.
- guests (no member) buy 25.00 on 01-15 (s1, pos) and 15.00 on 02-20 (s2, app).
- run-due on 03-15 12:00 expires the 30 points left of ann's 01-10 lot.

Balances afterwards: ann 110, bob 40, cat 50.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from setia.service.analytics_sales import record_guest_sales
from setia.service.events import ingest_event
from setia.service.members import upsert_member
from setia.service.redemptions import redeem
from setia.service.run_due import run_due
from tests.conftest import at, fixed_clock, load_programme

P = "cafe"
CAFE: dict[str, Any] = {
    "id": P, "name": "Cafe", "currency": "MYR", "timezone": "Asia/Kuala_Lumpur",
    "points": {"name": "Points", "pending_days": 0,
               "expiry": {"policy": "rolling", "months": 2}},
    "earn": [{"id": "base", "on": "purchase", "rate": 1},
             {"id": "welcome", "on": "signup", "points": 10}],
    "tiers": {"metric": "spend", "window": "calendar_year",
              "levels": [{"id": "member", "name": "Member", "threshold": 0},
                         {"id": "gold", "name": "Gold", "threshold": 100, "multiplier": 2}]},
    "rewards": [{"id": "coffee", "name": "Coffee", "cost": 20}],
    "analytics": {"cost_per_point": "0.01", "churn_days": 30},
}


def purchase(engine: sa.Engine, event_id: str, member: str, when: str, amount: str,
             store: str, channel: str, program: str = P) -> None:
    ingest_event(engine, program, {
        "id": event_id, "type": "purchase", "member": member, "occurred_at": when,
        "order_id": f"o-{event_id}", "amount": amount, "currency": "MYR",
        "store": store, "channel": channel,
    }, fixed_clock(when))


def build(engine: sa.Engine) -> None:
    load_programme(engine, dict(CAFE))
    upsert_member(engine, P, "ann", {}, fixed_clock("2027-01-05T09:00:00+08:00"))
    upsert_member(engine, P, "bob", {}, fixed_clock("2027-01-20T09:00:00+08:00"))
    upsert_member(engine, P, "cat", {}, fixed_clock("2027-02-03T09:00:00+08:00"))
    purchase(engine, "e1", "ann", "2027-01-10T10:00:00+08:00", "40.00", "s1", "pos")
    purchase(engine, "e2", "ann", "2027-01-25T10:00:00+08:00", "70.00", "s1", "pos")
    purchase(engine, "e3", "bob", "2027-02-01T07:00:00+08:00", "30.00", "s2", "app")
    purchase(engine, "e4", "ann", "2027-02-10T10:00:00+08:00", "20.00", "s2", "app")
    purchase(engine, "e5", "cat", "2027-02-14T10:00:00+08:00", "50.00", "s1", "pos")
    ingest_event(engine, P, {
        "id": "r5", "type": "refund", "member": "cat", "order_id": "o-e5", "amount": "10.00",
        "occurred_at": "2027-02-15T10:00:00+08:00",
    }, fixed_clock("2027-02-15T10:00:00+08:00"))
    redeem(engine, P, {"member": "ann", "reward": "coffee"}, "redeem-ann-1",
           fixed_clock("2027-02-12T10:00:00+08:00"))
    record_guest_sales(engine, P, [
        {"id": "g1", "occurred_at": "2027-01-15T12:00:00+08:00", "amount": "25.00",
         "store": "s1", "channel": "pos"},
        {"id": "g2", "occurred_at": "2027-02-20T12:00:00+08:00", "amount": "15.00",
         "store": "s2", "channel": "app"},
    ], fixed_clock("2027-03-01T00:00:00+08:00"))
    run_due(engine, at("2027-03-15T12:00:00+08:00"), P)
