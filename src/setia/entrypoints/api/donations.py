"""Donation endpoints: totals per cause."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool

from setia.entrypoints.api import schemas
from setia.entrypoints.api.auth import READ_SCOPES, Caller, require
from setia.service import donations

router = APIRouter(prefix="/v1/programs/{program}", tags=["donations"])


@router.get("/causes", responses=schemas.PROBLEM_RESPONSES)
async def get_causes(program: str, request: Request,
                     caller: Caller = Depends(require(*READ_SCOPES))) -> Any:
    caller.check_program(program)
    return await run_in_threadpool(donations.totals, request.app.state.engine, program)
