"""Coupon endpoints: validate and redeem a code, give uses back, batches of codes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from setia.entrypoints.api import schemas
from setia.entrypoints.api.app import IdempotencyKey, read_body
from setia.entrypoints.api.auth import STAFF_SCOPES, Caller, require
from setia.service import coupons

router = APIRouter(prefix="/v1/programs/{program}", tags=["coupons"])

BASKET = {
    "type": "object",
    "required": ["code", "member", "amount"],
    "additionalProperties": False,
    "properties": {
        "code": {"type": "string", "minLength": 1, "maxLength": 64},
        "member": {"type": "string", "minLength": 1, "maxLength": 128},
        "amount": schemas.DECIMAL,
        "currency": {"type": "string"},
        "order_id": {"type": "string", "minLength": 1, "maxLength": 128},
        "lines": {"type": "array", "items": schemas.LINE},
    },
}
VALIDATE_BODY = schemas._json_body(BASKET)
REDEEM_BODY = schemas._json_body({**BASKET, "required": ["code", "member", "amount",
                                                         "order_id"]})
RELEASE_BODY = schemas._json_body({
    "type": "object", "required": ["order_id"], "additionalProperties": False,
    "properties": {"order_id": {"type": "string", "minLength": 1, "maxLength": 128},
                   "code": {"type": "string", "minLength": 1, "maxLength": 64}}})
BATCH_BODY = schemas._json_body({
    "type": "object", "required": ["count"], "additionalProperties": False,
    "properties": {"count": {"type": "integer", "minimum": 1, "maximum": 1_000_000},
                   "prefix": {"type": "string", "maxLength": 12}}})
CSV_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"description": "code,coupon,batch,status", "content": {"text/csv": {}}}}


@router.post("/coupons/validate", openapi_extra=VALIDATE_BODY,
             responses=schemas.PROBLEM_RESPONSES)
async def post_validate(program: str, request: Request,
                        caller: Caller = Depends(require(*STAFF_SCOPES))) -> Any:
    caller.check_program(program)
    body = await read_body(request)
    return await run_in_threadpool(coupons.validate, request.app.state.engine, program, body)


@router.post("/coupons/redeem", status_code=201, openapi_extra=REDEEM_BODY,
             responses=schemas.PROBLEM_RESPONSES)
async def post_redeem(program: str, request: Request, key: str = IdempotencyKey,
                      caller: Caller = Depends(require(*STAFF_SCOPES))) -> Any:
    caller.check_program(program)
    body = await read_body(request)
    return await run_in_threadpool(coupons.redeem, request.app.state.engine, program, body, key)


@router.post("/coupons/release", openapi_extra=RELEASE_BODY,
             responses=schemas.PROBLEM_RESPONSES)
async def post_release(program: str, request: Request, key: str = IdempotencyKey,
                       caller: Caller = Depends(require(*STAFF_SCOPES))) -> Any:
    caller.check_program(program)
    body = await read_body(request)
    return await run_in_threadpool(coupons.release, request.app.state.engine, program, body, key)


@router.get("/coupons/uses", responses=schemas.PROBLEM_RESPONSES)
async def get_uses(program: str, request: Request,
                   order_id: str = Query(..., min_length=1, max_length=128),
                   caller: Caller = Depends(require(*STAFF_SCOPES))) -> Any:
    caller.check_program(program)
    uses = await run_in_threadpool(coupons.uses_of_order, request.app.state.engine, program,
                                   order_id)
    return {"order_id": order_id, "uses": uses}


@router.post("/coupons/{coupon}/batches", status_code=201, openapi_extra=BATCH_BODY,
             responses=schemas.PROBLEM_RESPONSES)
async def post_batch(program: str, coupon: str, request: Request, key: str = IdempotencyKey,
                     caller: Caller = Depends(require("admin"))) -> Any:
    caller.check_program(program)
    body = await read_body(request)
    return await run_in_threadpool(coupons.generate_batch, request.app.state.engine, program,
                                   coupon, body, key)


@router.get("/coupon-batches/{batch}/codes", response_class=StreamingResponse,
            responses={**schemas.PROBLEM_RESPONSES, **CSV_RESPONSE})
async def get_batch_codes(program: str, batch: str, request: Request,
                          caller: Caller = Depends(require("admin"))) -> StreamingResponse:
    caller.check_program(program)
    chunks = await run_in_threadpool(coupons.export_batch, request.app.state.engine, program,
                                     batch)
    return StreamingResponse(chunks, media_type="text/csv", headers={
        "Content-Disposition": f'attachment; filename="{batch}.csv"'})
