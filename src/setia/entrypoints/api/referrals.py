"""Referral endpoints: a member's code and link, linking, the review queue."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool

from setia.entrypoints.api import schemas
from setia.entrypoints.api.app import IdempotencyKey, read_body, read_optional_body
from setia.entrypoints.api.auth import READ_SCOPES, STAFF_SCOPES, Caller, require
from setia.service import referrals

router = APIRouter(prefix="/v1/programs/{program}", tags=["referrals"])

LINK_BODY = schemas._json_body({
    "type": "object", "required": ["code", "member"], "additionalProperties": False,
    "properties": {"code": {"type": "string", "minLength": 1, "maxLength": 32},
                   "member": {"type": "string", "minLength": 1, "maxLength": 128},
                   "ip": {"type": "string", "minLength": 1, "maxLength": 64}}})
DECISION_BODY = {"requestBody": {"required": False, "content": {"application/json": {
    "schema": {"type": "object", "additionalProperties": False,
               "properties": {"reason": {"type": "string", "minLength": 1,
                                         "maxLength": 300}}}}}}}


@router.get("/members/{member}/referral", responses=schemas.PROBLEM_RESPONSES)
async def get_code(program: str, member: str, request: Request,
                   caller: Caller = Depends(require(*READ_SCOPES))) -> Any:
    caller.check_program(program)
    return await run_in_threadpool(referrals.code_for, request.app.state.engine, program, member)


@router.post("/referrals", status_code=201, openapi_extra=LINK_BODY,
             responses=schemas.PROBLEM_RESPONSES)
async def post_referral(program: str, request: Request, key: str = IdempotencyKey,
                        caller: Caller = Depends(require(*STAFF_SCOPES))) -> Any:
    caller.check_program(program)
    body = await read_body(request)
    return await run_in_threadpool(referrals.link, request.app.state.engine, program, body, key)


@router.get("/referrals", responses=schemas.PROBLEM_RESPONSES)
async def get_referrals(program: str, request: Request,
                        status: str | None = Query(None, max_length=16),
                        limit: int = Query(100, ge=1, le=referrals.MAX_LIST),
                        caller: Caller = Depends(require("admin"))) -> Any:
    caller.check_program(program)
    found = await run_in_threadpool(referrals.listing, request.app.state.engine, program,
                                    status, limit)
    return {"referrals": found}


@router.get("/referrals/{referral}", responses=schemas.PROBLEM_RESPONSES)
async def get_referral(program: str, referral: str, request: Request,
                       caller: Caller = Depends(require("admin"))) -> Any:
    caller.check_program(program)
    return await run_in_threadpool(referrals.get, request.app.state.engine, program, referral)


async def _decide(program: str, referral: str, decision: str, request: Request,
                  key: str) -> Any:
    body = await read_optional_body(request, absent=lambda: None)
    return await run_in_threadpool(referrals.decide, request.app.state.engine, program,
                                   referral, decision, body, key)


@router.post("/referrals/{referral}/approve", openapi_extra=DECISION_BODY,
             responses=schemas.PROBLEM_RESPONSES)
async def post_approve(program: str, referral: str, request: Request,
                       key: str = IdempotencyKey,
                       caller: Caller = Depends(require("admin"))) -> Any:
    caller.check_program(program)
    return await _decide(program, referral, "approve", request, key)


@router.post("/referrals/{referral}/reject", openapi_extra=DECISION_BODY,
             responses=schemas.PROBLEM_RESPONSES)
async def post_reject(program: str, referral: str, request: Request,
                      key: str = IdempotencyKey,
                      caller: Caller = Depends(require("admin"))) -> Any:
    caller.check_program(program)
    return await _decide(program, referral, "reject", request, key)
