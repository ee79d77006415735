"""Survey endpoints: responses, and NPS and satisfaction per period."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool

from setia.domain.events import parse_time
from setia.entrypoints.api import schemas
from setia.entrypoints.api.app import IdempotencyKey, read_body
from setia.entrypoints.api.auth import STAFF_SCOPES, Caller, require
from setia.service import surveys

router = APIRouter(prefix="/v1/programs/{program}", tags=["surveys"])

RESPONSE_BODY = schemas._json_body({
    "type": "object", "required": ["member", "answers"], "additionalProperties": False,
    "properties": {"member": {"type": "string", "minLength": 1, "maxLength": 128},
                   "answers": {"type": "object"}, "submitted_at": schemas.TIME}})


@router.post("/surveys/{survey}/responses", status_code=201, openapi_extra=RESPONSE_BODY,
             responses=schemas.PROBLEM_RESPONSES)
async def post_response(program: str, survey: str, request: Request, key: str = IdempotencyKey,
                        caller: Caller = Depends(require(*STAFF_SCOPES))) -> Any:
    caller.check_program(program)
    body = await read_body(request)
    return await run_in_threadpool(surveys.submit, request.app.state.engine, program, survey,
                                   body, key)


@router.get("/surveys/{survey}/results", responses=schemas.PROBLEM_RESPONSES)
async def get_results(program: str, survey: str, request: Request,
                      per: str = Query("month", max_length=8),
                      since: str | None = Query(None, alias="from", max_length=40),
                      until: str | None = Query(None, max_length=40),
                      caller: Caller = Depends(require("admin"))) -> Any:
    caller.check_program(program)
    start = parse_time(since, "from") if since is not None else None
    end = parse_time(until, "until") if until is not None else None
    return await run_in_threadpool(surveys.results, request.app.state.engine, program, survey,
                                   per, start, end)
