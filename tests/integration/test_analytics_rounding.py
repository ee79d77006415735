"""Money is rounded once, half up, from the value itself, to the currency's digits: the
same text in JSON, CSV and the HTML report. On SQLite and PostgreSQL.

Programme "till" (times +08:00, 2027): 1 point per RM 1, RM 0.000165 a point.

- 200 guest sales on 02-15: 199 of 1.23 and one of 2.22, 246.99 in all: an average
  order value of 1.23495 (12,349.5 ten-thousandths).
- ann buys 30.00 on 02-10: 30 points outstanding, a liability of 30 x 0.000165 =
  0.00495 (49.5 ten-thousandths).
"""

from __future__ import annotations

import csv
import html
import re
from datetime import date
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import sqlalchemy as sa

from setia.entrypoints.report_html import render
from setia.service import analytics as an
from setia.service import analytics_reports as reports
from setia.service.analytics_sales import record_guest_sales
from setia.service.events import ingest_event
from setia.service.members import upsert_member
from tests.conftest import assert_journal_ok, fixed_clock, load_programme

D = date
P = "till"
FEBRUARY = (D(2027, 2, 1), D(2027, 2, 28))


@pytest.fixture
def till(engine: sa.Engine) -> sa.Engine:
    load_programme(engine, {
        "id": P, "name": "Till", "currency": "MYR", "timezone": "Asia/Kuala_Lumpur",
        "points": {"name": "Points", "pending_days": 0},
        "earn": [{"id": "base", "on": "purchase", "rate": 1}],
        "tiers": {"levels": [{"id": "member", "name": "Member", "threshold": 0}]},
        "analytics": {"cost_per_point": "0.000165"},
    })
    upsert_member(engine, P, "ann", {}, fixed_clock("2027-02-01T09:00:00+08:00"))
    ingest_event(engine, P, {
        "id": "e1", "type": "purchase", "member": "ann", "order_id": "o1",
        "occurred_at": "2027-02-10T10:00:00+08:00", "amount": "30.00"},
        fixed_clock("2027-02-10T10:00:00+08:00"))
    record_guest_sales(engine, P, [
        {"id": f"g{n}", "occurred_at": "2027-02-15T12:00:00+08:00",
         "amount": "2.22" if n == 0 else "1.23"} for n in range(200)
    ], fixed_clock("2027-02-16T00:00:00+08:00"))
    return engine


def csv_rows(engine: sa.Engine, metric: str, target: Path) -> list[dict[str, str]]:
    frame, digits = reports.export(engine, P, "metrics", *FEBRUARY, metric, grain="total")
    reports.write(frame, "csv", digits, target)
    with target.open() as file:
        return list(csv.DictReader(file))


def html_rows(page: str, metric: str) -> list[dict[str, str]]:
    """The rows of a metric's table in the HTML report, by column name."""
    section = page.split(f"<h2>{metric}</h2>", 1)[1].split("<h2>", 1)[0]
    table = section[section.index("<table>"):section.index("</table>")]
    cells = [[html.unescape(c) for c in re.findall(r"<t[hd]>(.*?)</t[hd]>", row)]
             for row in re.findall(r"<tr>(.*?)</tr>", table)]
    return [dict(zip(cells[0], row, strict=True)) for row in cells[1:]]


def test_an_average_and_a_liability_on_a_half_round_once_everywhere(
        till: sa.Engine, tmp_path: Path) -> None:
    # Given an average order value of 1.23495 and a liability of 0.00495
    # When February is shown as JSON, CSV and HTML
    answer = an.metrics(till, P, *FEBRUARY, ("sales", "points"), grain="total")
    sales_csv = csv_rows(till, "sales", tmp_path / "sales.csv")
    points_csv = csv_rows(till, "points", tmp_path / "points.csv")
    data = an.load(till, P, summary=True)
    options = an.options_for(data.programme, *FEBRUARY, grain="total")
    page = render(P, options, an.compute(data, options, ("sales", "points")), 2)
    # Then each rounds the exact value half up once: 1.23 (not 1.2350 -> 1.24) and 0.00
    # (not 0.0050 -> 0.01)
    sales = answer["metrics"]["sales"][0]
    points = answer["metrics"]["points"][0]
    assert (sales["guest_orders"], sales["guest_sales"], sales["aov_non_member"]) == (
        200, "246.99", "1.23")
    assert (points["outstanding"], points["liability"]) == (30, "0.00")
    assert [(r["guest_orders"], r["guest_sales"], r["aov_non_member"], r["aov_member"])
            for r in sales_csv] == [("200", "246.99", "1.23", "30.00")]
    assert [(r["outstanding"], r["liability"]) for r in points_csv] == [("30", "0.00")]
    assert [(r["guest_sales"], r["aov_non_member"]) for r in html_rows(page, "sales")] == [
        ("246.99", "1.23")]
    assert [(r["outstanding"], r["liability"]) for r in html_rows(page, "points")] == [
        ("30", "0.00")]
    assert_journal_ok(till)


@pytest.mark.parametrize("digits", [0, 2, 3])
def test_table_money_text_is_the_json_text_for_every_value(engine: sa.Engine,
                                                           digits: int) -> None:
    # Given money columns of floats (averages, liabilities) and of whole ten-thousandths
    # on and beside the halves of every unit shown
    floats: list[Any] = [12_349.5, -12_349.5, 12_350.5, 12_349.999999999998, 12_350.0,
                         49.5, -49.5, 12_349.499999999998, 12_349.500000000002, 5.0,
                         4_999.5, 5_000.0, -0.4, -0.0, 0.0, 0.5, 2_469_900 / 200,
                         10_000 / 3, 1e12 + 0.5, -1e12 - 5_000.0, None]
    whole: list[Any] = [12_349, 12_350, -12_350, -49, 0, 5, 50, 5_000, 15_000, -15_000,
                        10**15 + 5_000, None] + [0] * (len(floats) - 12)
    frame = pl.DataFrame({"a_e4": floats, "b_e4": whole},
                         schema={"a_e4": pl.Float64, "b_e4": pl.Int64})
    # When shown in a table (CSV, HTML, terminal) and as JSON
    shown = an.for_display(frame, digits)
    answered = an.records(frame, digits)
    assert answered is not None
    # Then the texts are the same, value for value
    assert shown["a"].to_list() == [row["a"] for row in answered]
    assert shown["b"].to_list() == [row["b"] for row in answered]
    # and at 2 digits, for instance
    if digits == 2:
        assert shown["a"].to_list()[:7] == ["1.23", "-1.23", "1.24", "1.23", "1.24",
                                            "0.00", "0.00"]
        assert shown["b"].to_list()[:4] == ["1.23", "1.24", "-1.24", "0.00"]
    assert_journal_ok(engine)
