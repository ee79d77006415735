"""Bearer API keys and scopes: 401 for no or a wrong key, 403 for the wrong scope."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from setia.service import audit
from setia.service.keys import (
    NEEDS_DATABASE,
    Principal,
    authenticate,
    authenticate_without_database,
)

BEARER = {"WWW-Authenticate": "Bearer"}


@dataclass(frozen=True)
class Caller:
    principal: Principal

    def check_program(self, program_id: str) -> None:
        if not self.principal.may_use(program_id):
            raise HTTPException(
                403, f"this API key is for programme {self.principal.program_id}, not {program_id}"
            )


def require(*scopes: str) -> Callable[[Request], Awaitable[Caller]]:
    async def dependency(request: Request) -> Caller:
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise HTTPException(
                401, "send an API key as 'Authorization: Bearer <key>'", headers=BEARER
            )
        key = key.strip()
        # The env admin key and recently checked keys need no query: no thread hop for them.
        quick = authenticate_without_database(key)
        if quick is NEEDS_DATABASE:
            principal = await run_in_threadpool(authenticate, request.app.state.engine, key)
        else:
            principal = quick if isinstance(quick, Principal) else None
        if principal is None:
            raise HTTPException(401, "the API key is not valid", headers=BEARER)
        if principal.scope not in scopes:
            raise HTTPException(
                403, f"a {principal.scope} key may not do this; it needs {' or '.join(scopes)}"
            )
        audit.acting_as(f"key:{principal.key_id}")  # who, for the audit log
        return Caller(principal)

    return dependency
