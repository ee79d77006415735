"""HTTP endpoints of store credit: balances, statements, holds at the till."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from setia.entrypoints.api import schemas
from setia.entrypoints.api.auth import READ_SCOPES, STAFF_SCOPES, Caller, require
from setia.service import store_credit

router = APIRouter(prefix="/v1/programs/{program}", tags=["store credit"])

HOLD_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["member", "amount"],
    "properties": {"member": {"type": "string"},
                   "amount": {"type": "string", "example": "12.50"},
                   "reference": {"type": "string", "maxLength": 200}},
    "additionalProperties": False}}}}}
_MONEY = {"type": "string", "example": "12.50"}
_BALANCES = {"type": "object", "required": ["available", "reserved"],
             "properties": {"available": _MONEY, "reserved": _MONEY}}
HOLD_VIEW = {"description": "the hold", "content": {"application/json": {"schema": {
    "type": "object",
    "required": ["id", "status", "member", "amount", "captured", "hold_expires_at", "balances"],
    "properties": {"id": {"type": "string"},
                   "status": {"type": "string", "enum": ["held", "captured", "released"]},
                   "member": {"type": "string"}, "amount": _MONEY, "captured": _MONEY,
                   "reference": {"type": ["string", "null"]},
                   "hold_expires_at": {"type": "string", "format": "date-time"},
                   "balances": _BALANCES}}}}}
CREDIT_VIEW = {"description": "the member's store credit", "content": {"application/json": {
    "schema": {"type": "object",
               "required": ["member", "asset", "currency", "available", "reserved"],
               "properties": {"member": {"type": "string"}, "asset": {"type": "string"},
                              "currency": {"type": "string"}, "available": _MONEY,
                              "reserved": _MONEY}}}}}
ADJUST_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["member", "amount", "reason"],
    "properties": {"member": {"type": "string"},
                   "amount": {"type": "string", "examples": ["5.00", "-2.50"],
                              "description": "negative to take credit back"},
                   "reason": {"type": "string", "minLength": 1, "maxLength": 300}},
    "additionalProperties": False}}}}}
ADJUST_VIEW = {"description": "the adjustment", "content": {"application/json": {"schema": {
    "type": "object", "required": ["member", "amount", "reason", "ref", "balances"],
    "properties": {"member": {"type": "string"}, "amount": _MONEY,
                   "reason": {"type": "string"}, "ref": {"type": "string"},
                   "balances": _BALANCES}}}}}
STATEMENT_VIEW = {"description": "the statement, as JSON or (format=csv) CSV", "content": {
    "application/json": {"schema": {
        "type": "object",
        "required": ["member", "period", "opening_balance", "earned", "clawed_back", "spent",
                     "adjusted", "closing_balance", "lines"],
        "properties": {"period": {"type": "string"}, "opening_balance": _MONEY,
                       "earned": _MONEY, "clawed_back": _MONEY, "spent": _MONEY,
                       "adjusted": _MONEY,
                       "closing_balance": _MONEY,
                       "lines": {"type": "array", "items": {"type": "object"}}}}},
    "text/csv": {"schema": {"type": "string"}}}}
CAPTURE_BODY = {"requestBody": {"required": False, "content": {"application/json": {"schema": {
    "type": "object", "properties": {"amount": {"type": "string", "example": "8.00"}},
    "additionalProperties": False}}}}}


def _call(request: Request, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return run_in_threadpool(fn, request.app.state.engine, *args, **kwargs)


async def _body(request: Request, *, optional: bool = False) -> Any:
    from setia.entrypoints.api.app import read_body, read_optional_body

    if optional:
        return await read_optional_body(request, absent=lambda: None)
    return await read_body(request)


def _key() -> Any:
    """The Idempotency-Key header, as app.py declares it for every other POST."""
    return Header(alias="Idempotency-Key", min_length=1, max_length=200,
                  description="the caller's key for this write; a replay answers the first "
                              "result")


@router.get("/members/{member}/credit",
            responses={**schemas.PROBLEM_RESPONSES, 200: CREDIT_VIEW})
async def get_credit(request: Request, program: str, member: str,
                     caller: Caller = Depends(require(*READ_SCOPES))) -> Any:
    caller.check_program(program)
    return await _call(request, store_credit.balance, program, member)


@router.get("/members/{member}/credit/statement",
            responses={**schemas.PROBLEM_RESPONSES, 200: STATEMENT_VIEW})
async def get_statement(
    request: Request, program: str, member: str,
    period: str = Query(..., max_length=16, description="2027-03, 2027-Q1 or 2027"),
    format: Literal["json", "csv"] = Query("json"),  # noqa: A002 - the query parameter's name
    caller: Caller = Depends(require(*READ_SCOPES)),
) -> Any:
    caller.check_program(program)
    view = await _call(request, store_credit.statement, program, member, period)
    if format == "csv":
        return Response(store_credit.statement_csv(view), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="credit-'
                                 f'{view["period"]}.csv"'})
    return view


@router.post("/credit/holds", status_code=201, openapi_extra=HOLD_BODY,
             responses={**schemas.PROBLEM_RESPONSES, 201: HOLD_VIEW})
async def post_hold(request: Request, program: str, key: str = _key(),
                    caller: Caller = Depends(require(*STAFF_SCOPES))) -> Any:
    caller.check_program(program)
    body = await _body(request)
    return await _call(request, store_credit.hold, program, body, key)


@router.post("/credit/holds/{hold}/capture", openapi_extra=CAPTURE_BODY,
             responses={**schemas.PROBLEM_RESPONSES, 200: HOLD_VIEW})
async def post_capture(request: Request, program: str, hold: str, key: str = _key(),
                       caller: Caller = Depends(require(*STAFF_SCOPES))) -> Any:
    caller.check_program(program)
    body = await _body(request, optional=True)
    return await _call(request, store_credit.capture_or_release, program, hold, "capture",
                       body, key)


@router.post("/credit/holds/{hold}/release",
             responses={**schemas.PROBLEM_RESPONSES, 200: HOLD_VIEW})
async def post_release(request: Request, program: str, hold: str, key: str = _key(),
                       caller: Caller = Depends(require(*STAFF_SCOPES))) -> Any:
    caller.check_program(program)
    body = await _body(request, optional=True)
    return await _call(request, store_credit.capture_or_release, program, hold, "release",
                       body, key)


@router.post("/credit/adjustments", status_code=201, openapi_extra=ADJUST_BODY,
             responses={**schemas.PROBLEM_RESPONSES, 201: ADJUST_VIEW})
async def post_adjustment(request: Request, program: str, key: str = _key(),
                          caller: Caller = Depends(require("admin"))) -> Any:
    """An admin's correction of a member's store credit (negative to take it back)."""
    caller.check_program(program)
    body = await _body(request)
    return await _call(request, store_credit.adjust, program, body, key)
