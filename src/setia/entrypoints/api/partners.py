"""HTTP endpoint of partner settlement: what each partner owes or is owed in a period."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool

from setia.entrypoints.api import schemas
from setia.entrypoints.api.auth import Caller, require
from setia.service import partners

router = APIRouter(prefix="/v1/programs/{program}", tags=["partners"])


@router.get("/settlement", responses=schemas.PROBLEM_RESPONSES)
async def get_settlement(
    request: Request, program: str,
    period: str = Query(..., max_length=16, description="2027-03, 2027-Q1 or 2027"),
    caller: Caller = Depends(require("admin")),
) -> Any:
    caller.check_program(program)
    return await run_in_threadpool(partners.settlement, request.app.state.engine, program,
                                   period)
