"""HTTP endpoint of partner settlement: what each partner owes or is owed in a period."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool

from setia.entrypoints.api import schemas
from setia.entrypoints.api.auth import Caller, require
from setia.service import partners

router = APIRouter(prefix="/v1/programs/{program}", tags=["partners"])

_MONEY = {"type": "string", "example": "-1.60"}
SETTLEMENT_VIEW = {"description": "each settlement account's position in the period",
                   "content": {"application/json": {"schema": {
                       "type": "object",
                       "required": ["program", "period", "currency", "accounts", "total"],
                       "properties": {
                           "program": {"type": "string"}, "period": {"type": "string"},
                           "currency": {"type": "string"},
                           "point_value": {"type": ["string", "null"]}, "total": _MONEY,
                           "accounts": {"type": "array", "items": {
                               "type": "object",
                               "required": ["account", "points_issued", "points_burned",
                                            "net", "position", "amount"],
                               "properties": {
                                   "account": {"type": "string"},
                                   "partner": {"type": ["string", "null"]},
                                   "points_issued": {"type": "integer"},
                                   "points_burned": {"type": "integer"},
                                   "net": _MONEY,
                                   "position": {"type": "string",
                                                "enum": ["owes", "is owed", "settled"]},
                                   "amount": _MONEY}}}}}}}}


@router.get("/settlement", responses={**schemas.PROBLEM_RESPONSES, 200: SETTLEMENT_VIEW})
async def get_settlement(
    request: Request, program: str,
    period: str = Query(..., max_length=16, description="2027-03, 2027-Q1 or 2027"),
    caller: Caller = Depends(require("admin")),
) -> Any:
    caller.check_program(program)
    return await run_in_threadpool(partners.settlement, request.app.state.engine, program,
                                   period)
