"""Analytics at its edges: what-if money rounded and shown as everywhere else, a
degenerate CLV fit, a programme without members, the HTML report's charts of a
breakdown."""

from __future__ import annotations

import copy
from datetime import date
from decimal import Decimal

import pytest
import sqlalchemy as sa

from setia.service import analytics as an
from setia.service import whatif
from setia.service.events import ingest_event
from setia.service.members import upsert_member
from tests.conftest import fixed_clock, load_programme
from tests.integration.analytics_history import CAFE, P, build

D = date


@pytest.fixture
def cafe(engine: sa.Engine) -> sa.Engine:
    build(engine)
    return engine


def test_whatif_money_is_rounded_half_up(cafe: sa.Engine) -> None:
    # February, draft: 250 points at RM 0.0005 a point = 0.125 exactly; no breakage.
    draft = copy.deepcopy(CAFE)
    draft["earn"][0]["rate"] = 2
    draft["analytics"] = {"cost_per_point": "0.0005", "churn_days": 30}
    result = whatif.run(cafe, P, draft, D(2027, 2, 1), D(2027, 2, 28))
    assert result["draft"]["points_issued"] == 250
    # docs/analytics.md: money is rounded once, half up -> 0.13 (as `money` would show it)
    assert an.money(250 * Decimal("0.0005") * an.E4) == "0.13"
    assert (result["draft"]["liability"], result["draft"]["cost"]) == ("0.13", "0.13")


YEN = {
    "id": "yen", "name": "Yen", "currency": "JPY", "timezone": "Asia/Tokyo",
    "points": {"name": "Points", "pending_days": 0},
    "earn": [{"id": "base", "on": "purchase", "rate": 1}],
    "tiers": {"levels": [{"id": "member", "name": "Member", "threshold": 0}]},
    "analytics": {"cost_per_point": "1"},
}


def test_whatif_money_has_the_currencys_digits(engine: sa.Engine) -> None:
    load_programme(engine, dict(YEN))
    upsert_member(engine, "yen", "ann", {}, fixed_clock("2027-02-01T09:00:00+09:00"))
    ingest_event(engine, "yen", {
        "id": "e1", "type": "purchase", "member": "ann", "order_id": "o1",
        "occurred_at": "2027-02-10T10:00:00+09:00", "amount": "500", "currency": "JPY"},
        fixed_clock("2027-02-10T10:00:00+09:00"))
    result = whatif.run(engine, "yen", copy.deepcopy(YEN), D(2027, 2, 1), D(2027, 2, 28))
    metrics = an.metrics(engine, "yen", D(2027, 2, 1), D(2027, 2, 28), ("points",),
                         grain="total")
    # the metrics show yen without decimals: "500"; the what-if should too
    assert metrics["metrics"]["points"][0]["liability"] == "500"
    assert result["live"]["liability"] == "500"


def test_clv_with_a_degenerate_fit_answers_no_500(engine: sa.Engine) -> None:
    from fastapi.testclient import TestClient

    from setia.entrypoints.api.app import create_app
    from setia.service.clv import clv_report
    from setia.service.keys import create_key
    from tests.integration.analytics_history import purchase
    load_programme(engine, dict(CAFE))
    # two members, each buying RM 10.00 on 1 and 8 January: two repeat customers
    for name in ("ann", "bob"):
        upsert_member(engine, P, name, {}, fixed_clock("2027-01-01T09:00:00+08:00"))
        purchase(engine, f"{name}1", name, "2027-01-01T10:00:00+08:00", "10.00", "s1", "pos")
        purchase(engine, f"{name}2", name, "2027-01-08T10:00:00+08:00", "10.00", "s1", "pos")
    # The fit of these look-alike customers is degenerate. How it shows depends on the
    # machine's floating point: on some the optimizer returns parameters of 1e9 and NaN
    # predictions ("non-finite estimates"), on others it stops with scipy's ABNORMAL, or
    # ends finite and absurd ("implausible estimates"). Either way there is no usable fit,
    # and the report says so instead of answering NaN or a 500.
    report = clv_report(engine, P, D(2027, 3, 31))
    reason = report["model"]["unavailable"]
    assert reason.startswith("the models did not converge: "), reason
    assert report["model"]["bgnbd"] is None and report["model"]["gamma_gamma"] is None
    client = TestClient(create_app(engine), raise_server_exceptions=False)
    key = create_key(engine, "admin")
    answer = client.get(f"/v1/programs/{P}/analytics/clv", params={"as_of": "2027-03-31"},
                        headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 200, answer.text
    export = client.get(f"/v1/programs/{P}/analytics/exports/members",
                        params={"from": "2027-01-01", "to": "2027-03-31", "format": "csv"},
                        headers={"Authorization": f"Bearer {key}"})
    assert export.status_code == 200, export.text
    # the docs: no fit -> `unavailable` says why and the predictions are null; never NaN
    member = answer.json()["members"][0]
    assert (member["predicted_clv"], member["expected_purchases"]) == (None, None)


def test_whatif_of_a_programme_without_members(engine: sa.Engine) -> None:
    load_programme(engine, dict(CAFE))
    result = whatif.run(engine, P, copy.deepcopy(CAFE), D(2027, 2, 1), D(2027, 2, 28))
    assert (result["events"], result["members"], result["live"]["points_issued"]) == (0, 0, 0)


def test_html_sales_chart_is_not_drawn_for_a_breakdown(cafe: sa.Engine) -> None:
    from setia.entrypoints.report_html import charts
    drawn = {}
    for by in (None, "store", "tier", "channel", "partner"):
        data = an.load(cafe, P, by=by)
        options = an.options_for(data.programme, D(2027, 1, 1), D(2027, 3, 31), by=by)
        sales = an.sales(data, options)
        drawn[by] = "sales" in charts({"sales": sales})
    # store and tier draw no sales chart (one bar per period cannot hold a breakdown);
    # channel and partner should not either: their rows repeat each period
    assert drawn == {None: True, "store": False, "tier": False, "channel": False,
                     "partner": False}
