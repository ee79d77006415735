"""API keys: created once and shown once, stored as a SHA-256 hash, each with one scope.

A key is ``sk_<id>_<secret>``: the id finds the row, the hash of the whole key
proves it. Keys carry 192 random bits, so a fast hash is enough (no password
stretching is needed for a secret nobody chose).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import time
from dataclasses import dataclass

import sqlalchemy as sa

from setia.adapters.db import tables as t
from setia.domain.errors import InvalidField
from setia.service import audit
from setia.service.common import Clock, utc_now

SCOPES = ("admin", "pos", "member-read")
CACHE_SECONDS = 30.0  # a revoked key stops working within this time


@dataclass(frozen=True)
class Principal:
    key_id: str
    scope: str
    program_id: str | None  # None: every programme

    def may_use(self, program_id: str) -> bool:
        return self.program_id is None or self.program_id == program_id


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(engine: sa.Engine, scope: str, program_id: str | None = None,
               clock: Clock = utc_now) -> str:
    if scope not in SCOPES:
        raise InvalidField(f"scope must be one of {', '.join(SCOPES)}", field="scope")
    key_id = secrets.token_hex(6)
    key = f"sk_{key_id}_{secrets.token_urlsafe(24)}"
    with engine.begin() as conn:
        conn.execute(t.api_keys.insert().values(
            id=key_id, secret_hash=_digest(key), scope=scope, program_id=program_id,
            created_at=clock(),
        ))
        audit.record_now(conn, "key.create", program_id=program_id, target=f"key {key_id}",
                         before=None, after={"scope": scope}, now=clock())
    return key


_cache: dict[str, tuple[float, Principal | None]] = {}
_cache_lock = threading.Lock()


_ENV_ADMIN = Principal(key_id="env:SETIA_ADMIN_KEY", scope="admin", program_id=None)
NEEDS_DATABASE = object()  # what authenticate_without_database answers when it cannot


def authenticate_without_database(key: str) -> Principal | None | object:
    """What ``authenticate`` answers when it needs no query (the env admin key, a key
    that cannot be one, a key checked less than CACHE_SECONDS ago); ``NEEDS_DATABASE``
    otherwise. Cheap enough for an event loop."""
    admin_key = os.environ.get("SETIA_ADMIN_KEY")
    if admin_key and hmac.compare_digest(key.encode(), admin_key.encode()):
        return _ENV_ADMIN
    parts = key.split("_")
    if len(parts) < 3 or parts[0] != "sk" or len(key) > 200:
        return None
    cached = _cache.get(key)
    if cached is not None and cached[0] > time.monotonic():
        return cached[1]
    return NEEDS_DATABASE



def authenticate(engine: sa.Engine, key: str) -> Principal | None:
    """The principal a presented key stands for, or None."""
    quick = authenticate_without_database(key)
    if quick is not NEEDS_DATABASE:
        assert quick is None or isinstance(quick, Principal)
        return quick
    parts = key.split("_")
    now = time.monotonic()
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(t.api_keys.c.secret_hash, t.api_keys.c.scope, t.api_keys.c.program_id,
                      t.api_keys.c.revoked_at).where(t.api_keys.c.id == parts[1])
        ).one_or_none()
    principal = None
    if row is not None and row.revoked_at is None and hmac.compare_digest(
        row.secret_hash, _digest(key)
    ):
        principal = Principal(key_id=parts[1], scope=row.scope, program_id=row.program_id)
    with _cache_lock:
        if len(_cache) > 10_000:
            _cache.clear()
        _cache[key] = (now + CACHE_SECONDS, principal)
    return principal
