"""Bearer API keys and scopes: 401 for no or a wrong key, 403 for the wrong scope.

``authorize`` is the check itself, a plain call: the live path's routes (``live.py``) call
it directly, and ``require`` wraps it as a FastAPI dependency for every other route."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
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
# The scopes of the keys that may read a programme's members, and of the staff's keys (the
# owner's and the till's), which may write (events, members, redemptions ...) and read
# what only staff see (campaigns, a coupon's uses): the FastAPI routes (app.py) and the live
# path's routes (live.py) both ask for these, so their 403 answers name the same scopes.
READ_SCOPES = ("admin", "pos", "member-read")
STAFF_SCOPES = ("admin", "pos")
# Runs a blocking call off the event loop: ``await run(fn, *args)``.
Runner = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class Caller:
    principal: Principal

    def check_program(self, program_id: str) -> None:
        if not self.principal.may_use(program_id):
            raise HTTPException(
                403, f"this API key is for programme {self.principal.program_id}, not {program_id}"
            )


def bearer_credential(header: str) -> str | None:
    """The credential in an ``Authorization: Bearer <credential>`` header, None if the
    header does not carry one. The one reading of the header: ``bearer_key`` here and the
    per-key rate limit (``security``) both use it."""
    scheme, _, credential = header.partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential:
        return None
    return credential


def bearer_key(header: str) -> str:
    """The key in an ``Authorization: Bearer <key>`` header; 401 without one."""
    key = bearer_credential(header)
    if key is None:
        raise HTTPException(
            401, "send an API key as 'Authorization: Bearer <key>'", headers=BEARER
        )
    return key


def admit(principal: Principal | None, scopes: tuple[str, ...]) -> Caller:
    """The caller for a key's principal (None: no such key) if its scope is one of
    ``scopes``; 401 or 403 otherwise. Records who acts, for the audit log."""
    if principal is None:
        raise HTTPException(401, "the API key is not valid", headers=BEARER)
    if principal.scope not in scopes:
        raise HTTPException(
            403, f"a {principal.scope} key may not do this; it needs {' or '.join(scopes)}"
        )
    audit.acting_as(f"key:{principal.key_id}")  # who, for the audit log
    return Caller(principal)


async def authorize(header: str, scopes: tuple[str, ...], engine: sa.Engine,
                    run: Runner = run_in_threadpool) -> Caller:
    """The caller an Authorization header names, allowed one of ``scopes``. The env admin
    key and keys checked in the last 30 s need no query (no thread hop for them); any
    other key is looked up with ``run``."""
    key = bearer_key(header)
    quick = authenticate_without_database(key)
    if quick is NEEDS_DATABASE:
        principal = await run(authenticate, engine, key)
    else:
        principal = quick if isinstance(quick, Principal) else None
    return admit(principal, scopes)


def require(*scopes: str) -> Callable[[Request], Awaitable[Caller]]:
    async def dependency(request: Request) -> Caller:
        state = request.app.state
        run = getattr(state, "run", run_in_threadpool)
        return await authorize(request.headers.get("authorization", ""), scopes,
                               state.engine, run)

    return dependency
