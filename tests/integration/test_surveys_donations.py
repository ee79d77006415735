"""Surveys (responses, a reward capped per month, NPS per period) and donations (a reward
kind whose points go to a cause, with totals per cause) on growth-cafe."""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa

from setia.adapters.db import tables as t
from setia.adapters.db import tables_surveys as ts
from setia.domain.errors import InsufficientPoints, InvalidField, InvalidTime, UnknownMember
from setia.domain.surveys import UnknownSurvey
from setia.service import donations, surveys
from setia.service.members import get_member, upsert_member
from setia.service.redemptions import adjust, capture_or_release, redeem
from tests.conftest import assert_journal_ok, at, fixed_clock, load_programme
from tests.growth_programme import GROWTH

P = "growth-cafe"
ENROL = fixed_clock("2027-03-01T09:00:00+08:00")
NOW = fixed_clock("2027-03-10T12:00:00+08:00")


@pytest.fixture
def cafe(engine: sa.Engine) -> sa.Engine:
    load_programme(engine, GROWTH)
    for member in ("ana", "ben"):
        upsert_member(engine, P, member, {}, ENROL)
    return engine


def available(engine: sa.Engine, member: str) -> int:
    return get_member(engine, P, member, NOW)["balances"]["available"]


def responses(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(ts.survey_responses)
                            ).scalar_one()


def answer(engine: sa.Engine, member: str, nps: int, taste: int, when: str, key: str,
           received: str | None = None, **more: Any) -> dict[str, Any]:
    """A response answered at ``when``, received then (or at ``received``)."""
    return surveys.submit(engine, P, "visit", {
        "member": member, "answers": {"recommend": nps, "taste": taste, **more},
        "submitted_at": when}, key, fixed_clock(received or when))


def test_a_response_is_rewarded_once_a_month(cafe: sa.Engine) -> None:
    first = answer(cafe, "ana", 9, 5, "2027-03-02T10:00:00+08:00", "s-1", comment="Kopi!")
    assert (first["nps"], first["rating"], first["points"], first["answers"]) == (
        9, 5, 20, {"recommend": 9, "taste": 5, "comment": "Kopi!"})
    assert first["balances"]["available"] == 70  # welcome 50 + 20
    second = answer(cafe, "ana", 7, 4, "2027-03-20T10:00:00+08:00", "s-2")
    assert second["points"] == 0
    april = answer(cafe, "ana", 10, 5, "2027-04-01T00:30:00+08:00", "s-3")
    assert april["points"] == 20
    assert available(cafe, "ana") == 90
    assert answer(cafe, "ana", 9, 5, "2027-03-02T10:00:00+08:00", "s-1",
                  "2027-04-02T10:00:00+08:00", comment="Kopi!") == first
    with cafe.connect() as conn:
        rules = conn.execute(sa.select(t.postings.c.rule_id, t.postings.c.points)
                             .where(t.postings.c.rule_id.like("survey:%"))
                             .order_by(t.postings.c.id)).all()
    assert [tuple(r) for r in rules] == [("survey:visit", 20), ("survey:visit", 20)]
    with cafe.connect() as conn:  # a rewarded response is activity (inactivity expiry)
        last = conn.execute(sa.select(t.members.c.last_activity_at).where(
            t.members.c.id == "ana")).scalar_one()
    assert last == at("2027-04-01T00:30:00+08:00")
    # each reward is told as points earned, referring to its response; none for s-2
    with cafe.connect() as conn:
        told = [(kind, json.loads(data)) for kind, data in conn.execute(sa.text(
            "SELECT type, data FROM outbox WHERE member_id = 'ana' AND key NOT LIKE "
            "'%signup%' AND type <> 'member.enrolled' ORDER BY id"))]
    assert told == [
        ("points.earned", {"program": P, "member": "ana", "ref": first["id"], "points": 20,
                           "balances": {"available": 70, "pending": 0, "reserved": 0}}),
        ("points.earned", {"program": P, "member": "ana", "ref": april["id"], "points": 20,
                           "balances": {"available": 90, "pending": 0, "reserved": 0}})]
    assert_journal_ok(cafe)


def test_the_cap_counts_in_the_period_a_response_is_received(cafe: sa.Engine) -> None:
    # Given ana's rewarded response of 10 March
    assert answer(cafe, "ana", 9, 5, "2027-03-10T10:00:00+08:00", "s-1")["points"] == 20

    # When the till sends more the same day, dated in the three months before
    backdated = [answer(cafe, "ana", 9, 5, f"2027-0{month}-15T10:00:00+08:00", f"b-{month}",
                        "2027-03-10T11:00:00+08:00")["points"] for month in (2, 1)]
    december = answer(cafe, "ana", 9, 5, "2026-12-15T10:00:00+08:00", "b-12",
                      "2027-03-10T11:00:00+08:00")

    # Then none is rewarded: March's one reward is given (each month was found under its
    # cap, and paid); the responses keep their own dates for the results
    assert backdated + [december["points"]] == [0, 0, 0]
    assert december["submitted_at"] == "2026-12-15T10:00:00+08:00"
    assert available(cafe, "ana") == 70
    assert_journal_ok(cafe)


def test_a_response_dated_in_the_future_is_refused(cafe: sa.Engine) -> None:
    # Five minutes ahead of the server is a till's clock; more is refused, changing nothing
    assert answer(cafe, "ana", 9, 5, "2027-03-10T12:05:00+08:00", "s-1",
                  "2027-03-10T12:00:00+08:00")["points"] == 20
    with pytest.raises(InvalidField) as refused:
        answer(cafe, "ben", 9, 5, "2027-03-10T12:05:01+08:00", "s-2",
               "2027-03-10T12:00:00+08:00")
    assert refused.value.field == "submitted_at"
    assert responses(cafe) == 1
    assert available(cafe, "ben") == 50
    assert_journal_ok(cafe)


def test_nps_and_satisfaction_per_month(cafe: sa.Engine) -> None:
    # March: 10, 9 (promoters), 8 (passive), 6, 3 (detractors): NPS = 40 - 40 = 0.0
    # ratings 5, 4, 4, 2, 1: average 3.20, satisfied (4 or 5) 3 of 5 = 60.0
    march = [(10, 5), (9, 4), (8, 4), (6, 2), (3, 1)]
    for i, (nps, taste) in enumerate(march):
        answer(cafe, "ana" if i % 2 else "ben", nps, taste, f"2027-03-0{i + 1}T10:00:00+08:00",
               f"m-{i}")
    # April: 9, 9, 7: NPS = 66.666... -> 66.7; ratings 5, 4, 3: 4.00 and 66.7
    for i, (nps, taste) in enumerate([(9, 5), (9, 4), (7, 3)]):
        answer(cafe, "ana", nps, taste, f"2027-04-0{i + 1}T10:00:00+08:00", f"a-{i}")
    # 2027-03-31T20:00:00+00:00 is already April 1st in Kuala Lumpur
    answer(cafe, "ben", 0, 1, "2027-03-31T20:00:00+00:00", "late")
    result = surveys.results(cafe, P, "visit", "month")
    assert result["periods"] == [
        {"period": "2027-03", "responses": 5, "scores": 5, "promoters": 2, "passives": 1,
         "detractors": 2, "nps": "0.0", "ratings": 5, "average_rating": "3.20",
         "satisfaction": "60.0"},
        {"period": "2027-04", "responses": 4, "scores": 4, "promoters": 2, "passives": 1,
         "detractors": 1, "nps": "25.0", "ratings": 4, "average_rating": "3.25",
         "satisfaction": "50.0"},
    ]
    only = surveys.results(cafe, P, "visit", "year", since=at("2027-04-01T00:00:00+08:00"))
    assert [(p["period"], p["responses"]) for p in only["periods"]] == [("2027", 4)]


@pytest.mark.parametrize(("survey", "body", "error", "field"), [
    ("nope", {"member": "ana", "answers": {}}, UnknownSurvey, "survey"),
    ("visit", {"member": "ana", "answers": {"recommend": 11, "taste": 3}}, InvalidField,
     "answers.recommend"),
    ("visit", {"member": "ana", "answers": {"recommend": 5, "taste": 0}}, InvalidField,
     "answers.taste"),
    ("visit", {"member": "ana", "answers": {"recommend": 5}}, InvalidField, "answers.taste"),
    ("visit", {"member": "ana", "answers": {"recommend": 5, "taste": 3, "x": 1}}, InvalidField,
     "answers.x"),
    ("visit", {"member": "ana", "answers": {"recommend": True, "taste": 3}}, InvalidField,
     "answers.recommend"),
    ("visit", {"member": "ana", "answers": [1]}, InvalidField, "answers"),
    ("visit", {"member": "zed", "answers": {"recommend": 5, "taste": 3}}, UnknownMember,
     "member"),
    ("visit", {"member": "ana", "answers": {"recommend": 5, "taste": 3},
               "submitted_at": "yesterday"}, InvalidTime, "submitted_at"),
    ("visit", {"member": "ana", "answers": {"recommend": 5, "taste": 3},
               "submitted_at": "0001-01-01T00:30:00+00:00"}, InvalidTime, "submitted_at"),
])
def test_bad_responses_change_nothing(cafe: sa.Engine, survey: str, body: dict[str, Any],
                                      error: type[Exception], field: str) -> None:
    with pytest.raises(error) as refused:
        surveys.submit(cafe, P, survey, body, "bad", NOW)
    assert getattr(refused.value, "field", None) == field
    assert responses(cafe) == 0
    assert available(cafe, "ana") == 50
    assert_journal_ok(cafe)


def test_a_donation_reward_gives_points_to_its_cause(cafe: sa.Engine) -> None:
    adjust(cafe, P, {"member": "ana", "points": 250, "reason": "test"}, "adj-1", NOW)
    redeem(cafe, P, {"member": "ana", "reward": "donate-mercy"}, "d-1", NOW)
    held = redeem(cafe, P, {"member": "ana", "reward": "donate-mercy", "hold": True}, "d-2", NOW)
    # a hold is not a donation yet
    assert donations.totals(cafe, P)["causes"][0]["points"] == 100
    capture_or_release(cafe, P, held["id"], "capture", "d-2c", NOW)
    adjust(cafe, P, {"member": "ben", "points": 50, "reason": "test"}, "adj-2", NOW)
    redeem(cafe, P, {"member": "ben", "reward": "donate-mercy"}, "d-3", NOW)
    assert donations.totals(cafe, P) == {"causes": [
        {"cause": "mercy", "name": "MERCY Malaysia", "donations": 3, "donors": 2,
         "points": 300, "amount": "3.00", "currency": "MYR", "retired": False},
        {"cause": "zoo", "name": "Zoo Negara", "donations": 0, "donors": 0, "points": 0,
         "amount": "0.00", "currency": "MYR", "retired": False}]}
    with cafe.connect() as conn:
        tagged = conn.execute(sa.select(t.postings.c.code, t.postings.c.points)
                              .where(t.postings.c.rule_id == "donation:mercy")
                              .order_by(t.postings.c.id)).all()
    assert [tuple(r) for r in tagged] == [("redeem", 100), ("capture", 100), ("redeem", 100)]
    assert available(cafe, "ana") == 100  # 50 + 250 - 200
    assert available(cafe, "ben") == 0
    with pytest.raises(InsufficientPoints):
        redeem(cafe, P, {"member": "ben", "reward": "donate-mercy"}, "d-4", NOW)
    assert donations.totals(cafe, P)["causes"][0]["donations"] == 3
    assert_journal_ok(cafe)


def test_a_cause_a_later_version_removed_keeps_its_totals(cafe: sa.Engine) -> None:
    # Given ana's 200 points given to the zoo (RM 0.005 a point: RM 1.00), one step and by
    # a captured hold
    zoo_reward = {"id": "donate-zoo", "name": "Give 100 Beans to the zoo", "cost": 100,
                  "donation": {"cause": "zoo"}}
    load_programme(cafe, {**GROWTH, "rewards": [*GROWTH["rewards"], zoo_reward]})
    adjust(cafe, P, {"member": "ana", "points": 150, "reason": "test"}, "adj-1", NOW)
    redeem(cafe, P, {"member": "ana", "reward": "donate-zoo"}, "z-1", NOW)
    held = redeem(cafe, P, {"member": "ana", "reward": "donate-zoo", "hold": True}, "z-2",
                  NOW)
    capture_or_release(cafe, P, held["id"], "capture", "z-2c", NOW)

    # When a version without the zoo (nor its reward) is stored
    load_programme(cafe, {**GROWTH, "causes": GROWTH["causes"][:1]})

    # Then the totals still show the zoo's donations, as a retired cause, after mercy
    assert donations.totals(cafe, P) == {"causes": [
        {"cause": "mercy", "name": "MERCY Malaysia", "donations": 0, "donors": 0,
         "points": 0, "amount": "0.00", "currency": "MYR", "retired": False},
        {"cause": "zoo", "name": "Zoo Negara", "donations": 2, "donors": 1, "points": 200,
         "amount": "1.00", "currency": "MYR", "retired": True}]}
    assert available(cafe, "ana") == 0  # 50 + 150 - 200
    assert_journal_ok(cafe)
