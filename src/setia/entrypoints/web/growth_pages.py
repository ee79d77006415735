"""The owner's growth pages: campaigns (state, dates, budget, reach and cost), coupons
(uses, batches of codes with their CSV, giving uses back) and the referral review queue
(approve or reject). Thin, like the rest: the same services as the HTTP API, the form's
hidden key as the idempotency key of every write."""

from __future__ import annotations

import contextlib
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from setia.domain.errors import InvalidField, SetiaError
from setia.entrypoints.web.base import (
    check_csrf,
    engine_of,
    redirect,
    staff_session,
    whole_number,
)
from setia.entrypoints.web.staff_pages import _page, _period, _programme_facts
from setia.service import coupons, engagement_views, referrals
from setia.service.common import utc_now
from setia.service.staff import Session

router = APIRouter(include_in_schema=False)

MAX_WEB_BATCH = 100_000  # codes per batch from the page; the CLI and API go to 1,000,000
REFERRAL_ROWS = 100


# ----------------------------------------------------------------------------- campaigns


def _state(campaign: dict[str, Any], today: str) -> str:
    """scheduled, running, ended, or spent (the budget is used up), on the local day."""
    if campaign["from"] is not None and today < campaign["from"]:
        return "scheduled"
    if campaign["until"] is not None and today > campaign["until"]:
        return "ended"
    if campaign["budget_left"] == 0:
        return "spent"
    return "running"


@router.get("/staff/{program}/campaigns")
def campaigns_page(request: Request, program: str) -> Response:
    session = staff_session(request, program, role="owner")
    engine = engine_of(request)
    start, end = _period(request, program)
    listed = engagement_views.list_campaigns(engine, program)["campaigns"]
    context: dict[str, Any] = {"start": start, "end": end}
    try:
        from setia.service import analytics  # Polars is loaded on the first report

        figures = analytics.metrics(engine, program, start, end, ("campaigns",), grain="total")
        context["cost_per_point"] = figures["cost_per_point"]
        in_period = {row["campaign"]: row for row in figures["metrics"]["campaigns"] or []}
    except SetiaError as exc:
        context["error"], in_period = exc, {}
    timezone = _programme_facts(request, program)["timezone"]
    today = utc_now().astimezone(ZoneInfo(timezone)).date().isoformat()
    rows = [dict(c, state=_state(c, today), period=in_period.get(c["id"])) for c in listed]
    return _page(request, "campaigns.html", session, program,
                 status=context["error"].status if "error" in context else 200,
                 campaigns=rows, **context)


# ----------------------------------------------------------------------------- coupons


def _coupons_page(request: Request, session: Session, program: str, status: int = 200,
                  **context: Any) -> HTMLResponse:
    found = coupons.overview(engine_of(request), program)
    return _page(request, "coupons.html", session, program, status=status,
                 coupons=found["coupons"], batches=found["batches"], uses=found["uses"],
                 batch_coupons=[c for c in found["coupons"] if c["code"] is None],
                 batch_limit=MAX_WEB_BATCH, **context)


@router.get("/staff/{program}/coupons")
def coupons_page(request: Request, program: str) -> Response:
    session = staff_session(request, program, role="owner")
    return _coupons_page(request, session, program,
                         made=request.query_params.get("batch"),
                         released=request.query_params.get("released"))


@router.post("/staff/{program}/coupons/batches")
def coupons_batch(request: Request, program: str, coupon: str = Form(""),
                  count: str = Form(""), prefix: str = Form(""), key: str = Form(""),
                  csrf: str = Form("")) -> Response:
    session = staff_session(request, program, role="owner")
    check_csrf(session.csrf, csrf)
    try:
        if not whole_number(count.strip()) or not 1 <= int(count) <= MAX_WEB_BATCH:
            raise InvalidField(f"count must be a whole number from 1 to {MAX_WEB_BATCH:,}",
                               field="count")
        body: dict[str, Any] = {"count": int(count)}
        if prefix.strip():
            body["prefix"] = prefix.strip()
        made = coupons.generate_batch(engine_of(request), program, coupon, body,
                                      f"web-batch-{key}")
    except SetiaError as exc:
        return _coupons_page(request, session, program, status=exc.status, error=exc,
                             form={"coupon": coupon, "count": count, "prefix": prefix})
    return redirect(f"/staff/{program}/coupons?batch={made['id']}")


@router.get("/staff/{program}/coupons/batches/{batch}.csv")
def coupons_batch_csv(request: Request, program: str, batch: str) -> Response:
    staff_session(request, program, role="owner")
    try:
        chunks = coupons.export_batch(engine_of(request), program, batch)
    except SetiaError:
        raise HTTPException(404, "no such batch") from None
    return StreamingResponse(chunks, media_type="text/csv", headers={
        "Content-Disposition": f'attachment; filename="{batch}.csv"',
        "Cache-Control": "no-store"})


@router.post("/staff/{program}/coupons/release")
def coupons_release(request: Request, program: str, order_id: str = Form(""),
                    code: str = Form(""), key: str = Form(""),
                    csrf: str = Form("")) -> Response:
    session = staff_session(request, program, role="owner")
    check_csrf(session.csrf, csrf)
    body = {"order_id": order_id.strip()}
    if code.strip():
        body["code"] = code.strip()
    try:
        done = coupons.release(engine_of(request), program, body, f"web-release-{key}")
    except SetiaError as exc:
        return _coupons_page(request, session, program, status=exc.status, error=exc,
                             release={"order_id": order_id, "code": code})
    return redirect(f"/staff/{program}/coupons?released={len(done['released'])}")


# ----------------------------------------------------------------------------- referrals


def _referrals_page(request: Request, session: Session, program: str, status: int = 200,
                    **context: Any) -> HTMLResponse:
    engine = engine_of(request)
    shown = request.query_params.get("status", "review")
    if shown not in referrals.STATUSES:
        shown = "review"
    decided = request.query_params.get("decided")
    if decided and "decision" not in context:
        with contextlib.suppress(SetiaError):  # an id typed into the address: no message
            context["decision"] = referrals.get(engine, program, decided)
    return _page(request, "referrals.html", session, program, status=status, shown=shown,
                 statuses=referrals.STATUSES,
                 referrals=referrals.listing(engine, program, shown, REFERRAL_ROWS), **context)


@router.get("/staff/{program}/referrals")
def referrals_page(request: Request, program: str) -> Response:
    session = staff_session(request, program, role="owner")
    return _referrals_page(request, session, program)


@router.post("/staff/{program}/referrals/{referral}/{decision}")
def referrals_decide(request: Request, program: str, referral: str, decision: str,
                     reason: str = Form(""), key: str = Form(""),
                     csrf: str = Form("")) -> Response:
    session = staff_session(request, program, role="owner")
    check_csrf(session.csrf, csrf)
    if decision not in ("approve", "reject"):
        raise HTTPException(404, "no such decision")
    by = f"by {session.username}"
    text = " ".join(reason.split())[:250]
    body = {"reason": f"{text} ({by})" if text else by}
    try:
        referrals.decide(engine_of(request), program, referral, decision, body,
                         f"web-referral-{key}")
    except SetiaError as exc:
        return _referrals_page(request, session, program, status=exc.status, error=exc)
    return redirect(f"/staff/{program}/referrals?decided={referral}")


__all__ = ["router"]
