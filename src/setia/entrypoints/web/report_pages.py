"""The owner's reports: the analytics metrics of a chosen period as tables (sales,
points, members, coupons, RFM segments), the HTML report of ``setia report --html`` and
the CSV exports of ``GET .../analytics/exports/{dataset}`` as downloads. Polars and the
analytics services are imported on the first report, not at start."""

from __future__ import annotations

import io
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from setia.domain.errors import SetiaError
from setia.entrypoints.web.base import engine_of, staff_session
from setia.entrypoints.web.staff_pages import _page, _period

router = APIRouter(include_in_schema=False)

GRAINS = ("day", "week", "month", "total")
SHOWN = ("sales", "points", "enrolments", "churn", "coupons", "rfm")
DATASETS = ("members", "journal", "metrics")


def _grain(request: Request) -> str:
    grain = request.query_params.get("grain", "month")
    return grain if grain in GRAINS else "month"


def _members_by_period(enrolments: list[dict[str, Any]] | None,
                       churn: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Enrolments and churn side by side, one row per period that either has."""
    rows: dict[str, dict[str, Any]] = {}
    for row in churn or []:
        rows[row["period"]] = {"period": row["period"], "enrolments": 0, **row}
    for row in enrolments or []:
        rows.setdefault(row["period"], {"period": row["period"], "customers": None,
                                        "churned": None, "churn_rate": None})
        rows[row["period"]]["enrolments"] = row["enrolments"]
    return [rows[period] for period in sorted(rows)]


@router.get("/staff/{program}/reports")
def reports_page(request: Request, program: str) -> Response:
    session = staff_session(request, program, role="owner")
    start, end = _period(request, program)
    grain = _grain(request)
    context: dict[str, Any] = {"start": start, "end": end, "grain": grain, "grains": GRAINS,
                               "query": f"from={start}&to={end}&grain={grain}"}
    try:
        from setia.service import analytics

        found = analytics.metrics(engine_of(request), program, start, end, SHOWN, grain=grain)
    except SetiaError as exc:
        return _page(request, "reports.html", session, program, status=exc.status, error=exc,
                     metrics=None, **context)
    metrics = found["metrics"]
    metrics["members"] = _members_by_period(metrics.pop("enrolments"), metrics.pop("churn"))
    return _page(request, "reports.html", session, program, metrics=metrics,
                 cost_per_point=found["cost_per_point"], churn_days=found["churn_days"],
                 **context)


@router.get("/staff/{program}/reports/report.html")
def report_html(request: Request, program: str) -> Response:
    """The self-contained HTML report (inline CSS and SVG, no script), as a download."""
    staff_session(request, program, role="owner")
    start, end = _period(request, program)
    from setia.entrypoints import report_html as html_report
    from setia.service import analytics as an

    engine = engine_of(request)
    programme = an.programme_of(engine, program)
    options = an.options_for(programme, start, end, grain=_grain(request))
    results = an.compute(an.load(engine, program, summary=True), options)
    body = html_report.render(program, options, results, an._digits(programme))
    return Response(body, media_type="text/html; charset=utf-8", headers={
        "Content-Disposition": f'attachment; filename="{program}-report-{start}-{end}.html"',
        "Cache-Control": "no-store"})


@router.get("/staff/{program}/reports/{dataset}.csv")
def report_csv(request: Request, program: str, dataset: str) -> Response:
    """An export as CSV: ``members`` (with CLV and RFM, as of the period's last day),
    ``journal`` (every posting), or ``metrics`` (the sales metric by the chosen grain)."""
    staff_session(request, program, role="owner")
    if dataset not in DATASETS:
        return Response("no such export", status_code=404, media_type="text/plain")
    start, end = _period(request, program)
    from setia.service import analytics_reports as reports

    frame, digits = reports.export(engine_of(request), program, dataset, start, end, "sales",
                                   grain=_grain(request))
    buffer = io.BytesIO()
    reports.write(frame, "csv", digits, buffer)
    return Response(buffer.getvalue(), media_type="text/csv; charset=utf-8", headers={
        "Content-Disposition": f'attachment; filename="{program}-{dataset}-{start}-{end}.csv"',
        "Cache-Control": "no-store"})


__all__ = ["router"]
