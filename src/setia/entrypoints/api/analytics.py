"""Analytics over HTTP: /v1/programs/{program}/analytics/... (docs/api.md, "Analytics").

Reads need an admin key; guest sales and their refunds may also come from a till (pos
key)."""

from __future__ import annotations

import io
from datetime import date
from decimal import Decimal
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from setia.entrypoints.api import schemas
from setia.entrypoints.api.auth import STAFF_SCOPES, Caller, require

# The services (and Polars, pandas, clvkit under them) are imported by the handlers at
# their first call, so that starting the server does not wait for them.
DEFAULT_HORIZON_WEEKS = 52

router = APIRouter(prefix="/v1/programs/{program}/analytics", tags=["analytics"])
ADMIN = Depends(require("admin"))
From = Annotated[date, Query(alias="from", description="first local day (programme time zone)")]
To = Annotated[date, Query(alias="to", description="last local day, included")]
Grain = Literal["day", "week", "month", "total"]
By = Literal["tier", "store", "channel", "partner"]
MetricName = Literal["sales", "enrolments", "retention", "churn", "points", "liability-ageing",
                     "campaigns", "coupons", "surveys", "memberships", "rfm"]
FILES = {
    "csv": "text/csv; charset=utf-8",
    "json": "application/json",
    "parquet": "application/vnd.apache.parquet",
}
FILE_RESPONSES: dict[int | str, dict[str, Any]] = {
    **schemas.PROBLEM_RESPONSES,
    200: {"description": "the export", "content": {
        "text/csv": {"schema": {"type": "string"}},
        "application/json": {"schema": {}},
        "application/vnd.apache.parquet": {"schema": {"type": "string", "format": "binary"}},
    }},
}


def _engine(request: Request) -> Any:
    return request.app.state.engine


@router.get("/metrics", responses=schemas.PROBLEM_RESPONSES)
async def get_metrics(
    request: Request, program: str, date_from: From, date_to: To,
    grain: Grain = "month", by: By | None = None,
    metric: Annotated[list[MetricName] | None, Query()] = None,
    churn_days: Annotated[int | None, Query(ge=1, le=3650)] = None,
    cost_per_point: Annotated[Decimal | None, Query(ge=0, le=1_000_000)] = None,
    caller: Caller = ADMIN,
) -> Any:
    """Metrics for a date range by day, week or month, overall or by one dimension."""
    caller.check_program(program)
    from setia.service import analytics as an

    return await run_in_threadpool(
        an.metrics, _engine(request), program, date_from, date_to,
        tuple(metric) if metric else None, grain=grain, by=by, churn_days=churn_days,
        cost_per_point=cost_per_point,
    )


@router.get("/clv", responses=schemas.PROBLEM_RESPONSES)
async def get_clv(
    request: Request, program: str,
    as_of: Annotated[date, Query(description="last local day of the history used")],
    horizon_weeks: Annotated[int, Query(ge=1, le=520)] = DEFAULT_HORIZON_WEEKS,
    after: Annotated[str | None, Query(max_length=128, description="cursor: a member id")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    caller: Caller = ADMIN,
) -> Any:
    """Per member: historic CLV, expected purchases, probability alive and predicted CLV."""
    caller.check_program(program)
    from setia.service.clv import clv_report

    return await run_in_threadpool(clv_report, _engine(request), program, as_of,
                                   horizon_weeks, None, after, limit)


@router.get("/clv/{member}", responses=schemas.PROBLEM_RESPONSES)
async def get_member_clv(
    request: Request, program: str, member: str,
    as_of: Annotated[date, Query()],
    horizon_weeks: Annotated[int, Query(ge=1, le=520)] = DEFAULT_HORIZON_WEEKS,
    caller: Caller = ADMIN,
) -> Any:
    caller.check_program(program)
    from setia.service.clv import clv_report

    return await run_in_threadpool(clv_report, _engine(request), program, as_of,
                                   horizon_weeks, member)


@router.get("/member-reports", responses=FILE_RESPONSES)
async def get_member_reports(
    request: Request, program: str, date_from: From, date_to: To,
    format: Literal["json", "csv"] = "json",
    member: Annotated[str | None, Query(max_length=128)] = None,
    caller: Caller = ADMIN,
) -> Any:
    """Per member statement for the period: points earned and spent, balances, tier
    progress."""
    caller.check_program(program)
    from setia.service import analytics as an
    from setia.service import analytics_reports as reports

    def work() -> bytes:
        data, frame = reports.statements(_engine(request), program, date_from, date_to, member)
        buffer = io.BytesIO()
        reports.write(frame, format, an._digits(data.programme), buffer)
        return buffer.getvalue()

    return Response(await run_in_threadpool(work), media_type=FILES[format])


@router.get("/audit", responses=schemas.PROBLEM_RESPONSES)
async def get_audit(
    request: Request, program: str, date_from: From, date_to: To,
    grain: Grain = "month", caller: Caller = ADMIN,
) -> Any:
    """The journal's totals per period against the metrics."""
    caller.check_program(program)
    from setia.service import analytics_reports as reports

    return await run_in_threadpool(reports.audit, _engine(request), program, date_from,
                                   date_to, grain)


@router.get("/exports/{dataset}", responses=FILE_RESPONSES)
async def get_export(
    request: Request, program: str, dataset: Literal["members", "journal", "metrics"],
    date_from: From, date_to: To,
    format: Literal["csv", "parquet", "json"] = "csv",
    metric: MetricName = "sales", grain: Grain = "month", by: By | None = None,
    caller: Caller = ADMIN,
) -> Any:
    """Members (with CLV and RFM), the journal, or one metric, as CSV, Parquet or JSON."""
    caller.check_program(program)
    from setia.service import analytics_reports as reports

    def work() -> bytes:
        frame, digits = reports.export(_engine(request), program, dataset, date_from, date_to,
                                       metric, grain=grain, by=by)
        buffer = io.BytesIO()
        reports.write(frame, format, digits, buffer)
        return buffer.getvalue()

    body = await run_in_threadpool(work)
    name = f"{program}-{dataset}.{format}"
    return Response(body, media_type=FILES[format],
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


WHATIF_BODY = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["draft", "from", "to"],
        "properties": {
            "draft": {"type": "object", "description": "a programme document"},
            "from": {"type": "string", "format": "date"},
            "to": {"type": "string", "format": "date"},
        }}}}},
}


@router.post("/whatif", responses=schemas.PROBLEM_RESPONSES, openapi_extra=WHATIF_BODY)
async def post_whatif(request: Request, program: str, caller: Caller = ADMIN) -> Any:
    """Replay the period through a draft programme and the live one; writes nothing."""
    caller.check_program(program)
    from setia.domain.errors import InvalidField
    from setia.entrypoints.api.app import read_body
    from setia.service import whatif

    body = await read_body(request, unique_keys=True)  # a draft programme: keys once
    if not isinstance(body, dict):
        raise InvalidField("the body must be a JSON object", field="(body)")
    dates = {}
    for key in ("from", "to"):
        try:
            dates[key] = date.fromisoformat(str(body.get(key)))
        except ValueError:
            raise InvalidField(f"{key} must be a date (YYYY-MM-DD)", field=key) from None
    return await run_in_threadpool(whatif.run, _engine(request), program, body.get("draft"),
                                   dates["from"], dates["to"])


SALES_BODY = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["sales"],
        "properties": {"sales": {"type": "array", "maxItems": 1000, "items": {
            "type": "object", "required": ["id", "occurred_at", "amount"],
            "properties": {
                "id": {"type": "string"}, "occurred_at": {"type": "string"},
                "amount": {"type": "string"}, "currency": {"type": "string"},
                "store": {"type": "string"}, "channel": {"type": "string"},
                "partner": {"type": "string"},
            }}}}}}}},
}


@router.post("/guest-sales", responses=schemas.PROBLEM_RESPONSES, openapi_extra=SALES_BODY)
async def post_guest_sales(
    request: Request, program: str, caller: Caller = Depends(require(*STAFF_SCOPES)),
) -> Any:
    """Sales without a member (the non-member side of average order value), idempotent by
    sale id."""
    caller.check_program(program)
    from setia.entrypoints.api.app import read_body
    from setia.service.analytics_sales import record_guest_sales

    body: Any = await read_body(request)
    sales = body.get("sales") if isinstance(body, dict) else None
    return await run_in_threadpool(record_guest_sales, _engine(request), program, sales)




REFUNDS_BODY = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["refunds"],
        "properties": {"refunds": {"type": "array", "maxItems": 1000, "items": {
            "type": "object", "required": ["id", "sale_id", "occurred_at", "amount"],
            "properties": {
                "id": {"type": "string"}, "sale_id": {"type": "string"},
                "occurred_at": {"type": "string"}, "amount": {"type": "string"},
                "currency": {"type": "string"},
            }}}}}}}},
}


@router.post("/guest-sales/refunds", responses=schemas.PROBLEM_RESPONSES,
             openapi_extra=REFUNDS_BODY)
async def post_guest_refunds(
    request: Request, program: str, caller: Caller = Depends(require(*STAFF_SCOPES)),
) -> Any:
    """Refunds of guest sales, each naming its sale and the amount given back; idempotent
    by refund id."""
    caller.check_program(program)
    from setia.entrypoints.api.app import read_body
    from setia.service.analytics_sales import record_guest_refunds

    body: Any = await read_body(request)
    refunds = body.get("refunds") if isinstance(body, dict) else None
    return await run_in_threadpool(record_guest_refunds, _engine(request), program, refunds)
