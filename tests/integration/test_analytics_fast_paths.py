"""The faster paths of the analytics give the same answers as the plain ones, on SQLite
and PostgreSQL: postings summed per 15 minutes in the database (``load(summary=True)``)
against one row per posting, for every metric, grain and range of the hand-built history."""

from __future__ import annotations

from datetime import UTC, date, datetime

import polars as pl
import pytest
import sqlalchemy as sa
from polars.testing import assert_frame_equal

from setia.adapters.db.analytics_read import slices_keep_dates
from setia.service import analytics as an
from tests.integration.analytics_history import P, build

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
