"""HTTP routes of operations and trust: member tokens and the member's own routes
(``/v1/me``), privacy (export, erase), the fraud review queue and the audit log; and
``install``, which adds them with the security middleware to the app."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from setia.domain.errors import IdempotencyConflict, InvalidField
from setia.entrypoints.api import schemas
from setia.entrypoints.api.auth import BEARER, STAFF_SCOPES, Caller, require
from setia.entrypoints.api.security import install_log_redaction, note_verified_token
from setia.service import activity, audit, fraud, member_tokens, members, privacy, redemptions
from setia.service.common import MAX_KEY_LENGTH
from setia.service.member_tokens import MemberPrincipal

router = APIRouter(responses=schemas.PROBLEM_RESPONSES)  # every route answers problems
BASE = "/v1/programs/{program}"
MAX_ID = 2**63 - 1  # ids are 64-bit integers in both databases
MEMBER_REDEMPTION_FIELDS = frozenset({"reward", "points", "hold"})


async def _body(request: Request) -> Any:
    from setia.entrypoints.api.app import read_body

    return await read_body(request)


async def _optional_body(request: Request) -> Any:
    """The body, ``{}`` when empty; read within the 1 MiB limit, never buffered whole
    first."""
    from setia.entrypoints.api.app import read_optional_body

    return await read_optional_body(request)


def _key(request: Request) -> str:
    """The Idempotency-Key header, refused as every other route refuses it (422
    invalid-field naming the header)."""
    key = request.headers.get("idempotency-key")
    if key is None or not key.strip() or len(key) > MAX_KEY_LENGTH:
        raise InvalidField(f"send an Idempotency-Key header of 1 to {MAX_KEY_LENGTH} characters",
                           field="Idempotency-Key")
    return key


async def member_caller(request: Request) -> MemberPrincipal:
    """A member token (``Authorization: Bearer smt_...``): 401 if absent or not valid."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not member_tokens.looks_like_token(token):
        raise HTTPException(401, "send a member token as 'Authorization: Bearer <token>'",
                            headers=BEARER)
    engine = request.app.state.engine
    principal = await run_in_threadpool(member_tokens.authenticate, engine, token)
    if principal is None:
        raise HTTPException(401, "the member token is not valid (unknown, expired or revoked)",
                            headers=BEARER)
    note_verified_token(token)  # from now on its requests count against its own limit
    return principal


async def _member_id(request: Request, principal: MemberPrincipal) -> str:
    return await run_in_threadpool(member_tokens.member_id, request.app.state.engine, principal)


# -- member tokens and the member's own routes --------------------------------------------

@router.post(BASE + "/members/{member}/tokens", tags=["members"], status_code=201)
async def post_member_token(program: str, member: str, request: Request,
                            caller: Caller = Depends(require(*STAFF_SCOPES))) -> Any:
    """A member token for the portal, shown once (admin or pos key)."""
    caller.check_program(program)
    body = await _optional_body(request)
    if isinstance(body, dict) and (unknown := sorted(set(body) - {"days"})):
        raise InvalidField(f"unknown field {unknown[0]!r}", field=unknown[0])
    days: Any = body.get("days", 30) if isinstance(body, dict) else None
    return await run_in_threadpool(member_tokens.issue, request.app.state.engine, program,
                                   member, days=days)


@router.delete(BASE + "/member-tokens/{token_id}", tags=["members"], status_code=204)
async def delete_member_token(program: str, token_id: str, request: Request,
                              caller: Caller = Depends(require("admin"))) -> None:
    caller.check_program(program)
    await run_in_threadpool(member_tokens.revoke, request.app.state.engine, program, token_id)


@router.get("/v1/me", tags=["member portal"])
async def get_me(request: Request, principal: MemberPrincipal = Depends(member_caller)) -> Any:
    """The token's member, as the member GET answers it."""
    member = await _member_id(request, principal)
    return JSONResponse(await run_in_threadpool(
        members.get_member, request.app.state.engine, principal.program_id, member))


@router.get("/v1/me/activity", tags=["member portal"])
async def get_my_activity(request: Request, limit: int = Query(50, ge=1, le=activity.MAX_LIMIT),
                          cursor: str | None = Query(None, max_length=64),
                          principal: MemberPrincipal = Depends(member_caller)) -> Any:
    member = await _member_id(request, principal)
    return await run_in_threadpool(activity.member_activity, request.app.state.engine,
                                   principal.program_id, member, limit=limit, cursor=cursor)


@router.post("/v1/me/redemptions", tags=["member portal"], status_code=201)
async def post_my_redemption(request: Request,
                             principal: MemberPrincipal = Depends(member_caller)) -> Any:
    """Redeem for the token's member: ``{reward}`` or ``{points}``; the member is the
    token's, never the body's."""
    key = _key(request)
    body = await _body(request)
    if not isinstance(body, dict):
        raise InvalidField("the redemption must be a JSON object", field="(body)")
    if "member" in body:
        raise HTTPException(403, "a member token redeems only for its own member")
    # the staff's redemption takes a partner too (where a till burns the points): a member
    # has no till, so the member's own body names only what the member chooses
    unknown = sorted(set(body) - MEMBER_REDEMPTION_FIELDS)
    if unknown:
        raise InvalidField(f"unknown field {unknown[0]!r}", field=unknown[0])
    member = await _member_id(request, principal)
    try:
        return await run_in_threadpool(redemptions.redeem, request.app.state.engine,
                                       principal.program_id, {**body, "member": member},
                                       member_tokens.scoped_key(principal.member_pk, key))
    except IdempotencyConflict:
        # named as the member sent it, not as it is kept (which names the member's row)
        raise IdempotencyConflict(f"idempotency key {key!r} was already used for a "
                                  "different request", field="Idempotency-Key") from None


# -- privacy ------------------------------------------------------------------------------

@router.get(BASE + "/members/{member}/export", tags=["privacy"])
async def get_member_export(program: str, member: str, request: Request,
                            caller: Caller = Depends(require("admin"))) -> Any:
    """Everything stored about the member, as JSON (a subject access request)."""
    caller.check_program(program)
    return JSONResponse(await run_in_threadpool(
        privacy.export_member, request.app.state.engine, program, member))


@router.post(BASE + "/members/{member}/erase", tags=["privacy"])
async def post_member_erase(program: str, member: str, request: Request,
                            caller: Caller = Depends(require("admin"))) -> Any:
    """Pseudonymise the member; balances and the journal stay as they are."""
    caller.check_program(program)
    key = _key(request)
    return await run_in_threadpool(privacy.erase_member, request.app.state.engine, program,
                                   member, key)


# -- fraud review queue -------------------------------------------------------------------

@router.get(BASE + "/reviews", tags=["fraud"])
async def get_reviews(program: str, request: Request, status: str = Query("open"),
                      after: int = Query(0, ge=0, le=MAX_ID), limit: int = Query(100, ge=1, le=500),
                      caller: Caller = Depends(require("admin"))) -> Any:
    caller.check_program(program)
    return {"data": await run_in_threadpool(fraud.reviews, request.app.state.engine, program,
                                            status, after_id=after, limit=limit)}


@router.post(BASE + "/reviews/{review}/{decision}", tags=["fraud"])
async def post_review_decision(program: str, decision: str, request: Request,
                               review: int = Path(ge=1, le=MAX_ID),
                               caller: Caller = Depends(require("admin"))) -> Any:
    """``decision``: approve (the held points become available) or reject (taken back)."""
    caller.check_program(program)
    if decision not in ("approve", "reject"):
        raise HTTPException(404, "decide with /approve or /reject")
    key = _key(request)
    return await run_in_threadpool(fraud.decide, request.app.state.engine, program, review,
                                   decision, key)


# -- audit log ----------------------------------------------------------------------------

@router.get("/v1/audit", tags=["operations"])
async def get_audit(request: Request, program: str | None = Query(None, max_length=64),
                    after: int = Query(0, ge=0, le=MAX_ID), limit: int = Query(100, ge=1, le=500),
                    caller: Caller = Depends(require("admin"))) -> Any:
    """Audit rows oldest first, from after ``after`` (the last id seen)."""
    if program is not None:
        caller.check_program(program)
    elif caller.principal.program_id is not None:
        program = caller.principal.program_id
    return {"data": await run_in_threadpool(audit.entries, request.app.state.engine, program,
                                            after_id=after, limit=limit)}


def install(app: FastAPI) -> None:
    """Routes and log redaction: one call from create_app (the rate limits and security
    headers are front.Front's)."""
    app.include_router(router)
    install_log_redaction()
    app.router.on_startup.append(install_log_redaction)
