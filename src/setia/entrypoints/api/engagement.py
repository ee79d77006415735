"""HTTP endpoints of campaigns, stamp cards and paid memberships (docs/api.md)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.concurrency import run_in_threadpool

from setia.entrypoints.api import schemas
from setia.entrypoints.api.auth import READ_SCOPES, STAFF_SCOPES, Caller, require
from setia.service import engagement_views, memberships

router = APIRouter()


def _body_schema(properties: dict[str, Any], *, required: bool) -> dict[str, Any]:
    schema = {"type": "object", "additionalProperties": False, "properties": properties}
    return {"requestBody": {"required": required,
                            "content": {"application/json": {"schema": schema}}}}


PLAN = {"plan": {"type": "string", "examples": ["kopi-plus"]}}
BUY_BODY = _body_schema(PLAN, required=True)
RENEW_BODY = _body_schema(PLAN, required=False)
CANCEL_BODY = _body_schema({"reason": {"type": "string"}}, required=False)
BASE = "/v1/programs/{program}"
IdempotencyKey = Header(alias="Idempotency-Key", min_length=1, max_length=200,
                        description="the caller's key for this write; a replay answers the "
                                    "first result")


async def _body(request: Request) -> Any:
    from setia.entrypoints.api.app import read_optional_body  # app.py includes this router

    return await read_optional_body(request)


@router.get(BASE + "/campaigns", tags=["campaigns"], responses=schemas.PROBLEM_RESPONSES)
async def list_campaigns(program: str, request: Request,
                         caller: Caller = Depends(require(*STAFF_SCOPES))) -> Any:
    """Every campaign of the current programme with its budget use and reach."""
    caller.check_program(program)
    return await run_in_threadpool(engagement_views.list_campaigns, request.app.state.engine,
                                   program)


@router.get(BASE + "/campaigns/{campaign}", tags=["campaigns"],
            responses=schemas.PROBLEM_RESPONSES)
async def get_campaign(program: str, campaign: str, request: Request,
                       caller: Caller = Depends(require(*STAFF_SCOPES))) -> Any:
    caller.check_program(program)
    return await run_in_threadpool(engagement_views.get_campaign, request.app.state.engine,
                                   program, campaign)


@router.get(BASE + "/members/{member}/stamp-cards", tags=["stamp cards"],
            responses=schemas.PROBLEM_RESPONSES)
async def get_stamp_cards(program: str, member: str, request: Request,
                          caller: Caller = Depends(require(*READ_SCOPES))) -> Any:
    """The member's progress on every stamp card, in the current period."""
    caller.check_program(program)
    return await run_in_threadpool(engagement_views.member_stamp_cards,
                                   request.app.state.engine, program, member)


@router.get(BASE + "/members/{member}/membership", tags=["memberships"],
            responses=schemas.PROBLEM_RESPONSES)
async def get_membership(program: str, member: str, request: Request,
                         caller: Caller = Depends(require(*READ_SCOPES))) -> Any:
    caller.check_program(program)
    return await run_in_threadpool(memberships.get_membership, request.app.state.engine,
                                   program, member)


@router.post(BASE + "/members/{member}/membership", tags=["memberships"], status_code=201,
             openapi_extra=BUY_BODY, responses=schemas.PROBLEM_RESPONSES)
async def buy_membership(program: str, member: str, request: Request,
                         key: str = IdempotencyKey,
                         caller: Caller = Depends(require(*STAFF_SCOPES))) -> Any:
    """Buy a paid plan: ``{"plan": "kopi-plus"}``; the fee is recorded."""
    caller.check_program(program)
    body = await _body(request)
    return await run_in_threadpool(memberships.buy, request.app.state.engine, program, member,
                                   body, key)


@router.post(BASE + "/members/{member}/membership/renew", tags=["memberships"],
             openapi_extra=RENEW_BODY, responses=schemas.PROBLEM_RESPONSES)
async def renew_membership(program: str, member: str, request: Request,
                           key: str = IdempotencyKey,
                           caller: Caller = Depends(require(*STAFF_SCOPES))) -> Any:
    """Renew from the end of the current period; ``{"plan": ...}`` optional."""
    caller.check_program(program)
    body = await _body(request)
    return await run_in_threadpool(memberships.renew, request.app.state.engine, program,
                                   member, body, key)


@router.post(BASE + "/members/{member}/membership/cancel", tags=["memberships"],
             openapi_extra=CANCEL_BODY, responses=schemas.PROBLEM_RESPONSES)
async def cancel_membership(program: str, member: str, request: Request,
                            key: str = IdempotencyKey,
                            caller: Caller = Depends(require(*STAFF_SCOPES))) -> Any:
    """Cancel now: benefits stop at once; ``{"reason": ...}`` optional."""
    caller.check_program(program)
    body = await _body(request)
    return await run_in_threadpool(memberships.cancel, request.app.state.engine, program,
                                   member, body, key)
