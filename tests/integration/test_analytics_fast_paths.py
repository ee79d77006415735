"""The faster paths of the analytics give the same answers as the plain ones, on SQLite
and PostgreSQL: postings summed per 15 minutes in the database (``load(summary=True)``)
against one row per posting, for every metric, grain and range of the hand-built history;
the what-if split over two processes against one."""

from __future__ import annotations

import copy
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import polars as pl
import pytest
import sqlalchemy as sa
from polars.testing import assert_frame_equal

from setia.adapters.db.analytics_read import slices_keep_dates
from setia.domain import tiers
from setia.domain.events import Event
from setia.domain.programme import compile_programme, validate_document
from setia.domain.whatif import MemberStart, merge, replay
from setia.service import analytics as an
from setia.service import whatif
from tests.integration.analytics_history import CAFE, P, build

D = date


@pytest.fixture
def cafe(engine: sa.Engine) -> sa.Engine:
    build(engine)
    return engine


def test_summed_postings_give_every_metric_as_per_posting(cafe: sa.Engine) -> None:
    plain = an.load(cafe, P)
    summed = an.load(cafe, P, summary=True)
    if cafe.dialect.name == "postgresql":  # summed in the database: fewer rows, no member
        assert "member_pk" not in summed.postings.columns
        assert summed.postings.height <= plain.postings.height
    for date_from, date_to in [(D(2027, 1, 1), D(2027, 3, 31)), (D(2027, 2, 1), D(2027, 2, 14)),
                               (D(2027, 1, 31), D(2027, 2, 1)), (D(2026, 6, 1), D(2028, 1, 1))]:
        for grain in an.GRAINS:
            options = an.options_for(plain.programme, date_from, date_to, grain=grain)
            for name, metric in an.METRICS.items():
                expected, got = metric(plain, options), metric(summed, options)
                if expected is None:
                    assert got is None, name
                    continue
                assert got is not None, name
                assert_frame_equal(got, expected, check_row_order=True), name
    # the API's answer goes through the summed path
    answer = an.metrics(cafe, P, D(2027, 1, 1), D(2027, 3, 31), ("points",))
    assert [r["issued"] for r in answer["metrics"]["points"]] == [
        int(plain.postings.filter(pl.col("day").dt.month() == m)["issued"].sum())
        for m in (1, 2, 3)]


def test_fifteen_minute_slices_keep_local_dates_except_in_odd_zones() -> None:
    slices = pl.DataFrame({"occurred_at": pl.datetime_range(
        datetime(1971, 1, 1, tzinfo=UTC), datetime(1971, 1, 3, tzinfo=UTC), "15m",
        eager=True)})
    assert slices_keep_dates(slices, "Asia/Kuala_Lumpur")
    assert slices_keep_dates(slices, "Asia/Kathmandu")  # +05:30 then, +05:45 later
    assert slices_keep_dates(slices, "America/St_Johns")  # -03:30
    # Liberia kept -00:44:30 until 1972: a local midnight falls inside a slice
    assert not slices_keep_dates(slices, "Africa/Monrovia")
    assert slices_keep_dates(slices.clear(), "Africa/Monrovia")


def test_whatif_split_over_two_processes_equals_one(cafe: sa.Engine) -> None:
    draft = copy.deepcopy(CAFE)
    draft["earn"][0]["rate"] = 2
    draft["tiers"]["levels"][1]["threshold"] = 50
    for date_from, date_to in [(D(2027, 2, 1), D(2027, 2, 28)), (D(2027, 1, 1), D(2027, 3, 31))]:
        one = whatif.run(cafe, P, copy.deepcopy(draft), date_from, date_to, workers=1)
        two = whatif.run(cafe, P, copy.deepcopy(draft), date_from, date_to, workers=2)
        assert two == one
        assert one["events"] > 0


def test_replays_of_disjoint_members_merge_into_the_whole() -> None:
    """Members replay independently: replaying each half of the members (the split the
    second process gets) and merging equals replaying everyone at once."""
    live = compile_programme(validate_document(copy.deepcopy(CAFE)), version=1)
    doc = copy.deepcopy(CAFE)
    doc["earn"][0]["rate"] = 3
    doc["earn"].append({"id": "weekday", "on": "purchase", "points": 5, "days": ["mon"],
                        "limit": {"count": 2, "per": "month"}})
    draft = compile_programme(validate_document(doc), version=0)
    names = [f"m{i}" for i in range(40)]
    starts = {m: MemberStart(m, "member", i % 3, {}, datetime(2026, 12, 1, tzinfo=UTC),
                             {"2027-01": tiers.Bucket(Decimal(i * 7), i, 1)})
              for i, m in enumerate(names)}
    events = [Event(id=f"e{k}", type="purchase", member=names[(k * 7) % 40],
                    occurred_at=datetime(2027, 2, 1, tzinfo=UTC) + timedelta(hours=5 * k),
                    order_id=f"o{k}", amount=Decimal(k % 15) + Decimal("0.35"),
                    currency="MYR") for k in range(400)]
    whole = replay(live, draft, starts, events)
    halves = [replay(live, draft, {m: s for m, s in starts.items() if hash_of(m) == i},
                     [e for e in events if hash_of(e.member) == i]) for i in (0, 1)]
    merged = merge(halves)
    assert all(h.events for h in halves)
    assert merged.points == whole.points and merged.tiers == whole.tiers
    assert merged.rules == whole.rules and merged.events == whole.events == 400
    assert {a for a, _ in whole.tiers.values()} == {"member", "gold"}  # some move up


def hash_of(member: str) -> int:
    return int(member[1:]) % 2
