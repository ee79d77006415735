"""Engines for SQLite (embedded default: WAL, busy timeout, one writer) and PostgreSQL."""

from __future__ import annotations

import os
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy import event

DEFAULT_URL = "sqlite:///setia.db"
SQLITE_BUSY_TIMEOUT_MS = 30_000


def database_url() -> str:
    return os.environ.get("SETIA_DATABASE_URL", DEFAULT_URL)


def json_text(value: Any) -> str:
    """JSON as stored in SQLite's TEXT columns: orjson's compact UTF-8 form."""
    return orjson.dumps(value).decode()


def make_engine(url: str | None = None, **kwargs: Any) -> sa.Engine:
    url = url or database_url()
    # orjson for every JSON column: it costs a tenth of json's encoder, and a bulk import
    # writes five JSON values per event. Reading accepts any JSON text.
    kwargs.setdefault("json_deserializer", orjson.loads)
    if url.startswith("sqlite"):
        kwargs.setdefault("json_serializer", json_text)
        engine = sa.create_engine(url, **kwargs)
        _configure_sqlite(engine)
        return engine
    kwargs.setdefault("pool_size", 20)
    kwargs.setdefault("max_overflow", 10)
    # No pre-ping: it cost a round trip per request. A connection found dead is
    # invalidated by SQLAlchemy's disconnect handling (the whole pool with it) and
    # ``service.common.transaction`` retries the work on a fresh connection.
    kwargs.setdefault("pool_pre_ping", False)
    kwargs.setdefault("json_serializer", orjson.dumps)  # psycopg takes the bytes as they are
    return sa.create_engine(url, **kwargs)


def _configure_sqlite(engine: sa.Engine) -> None:
    """WAL, a busy timeout, and BEGIN IMMEDIATE so a writer takes the lock up front.

    pysqlite's own transaction handling is turned off (the recipe in SQLAlchemy's
    SQLite notes) so that the BEGIN we emit is the one that counts.
    """

    # How long a statement waits for another writer's lock before "database is locked"
    # (which ``service.common.transaction`` retries a few times, then answers 503 busy).
    busy_timeout_ms = int(os.environ.get("SETIA_SQLITE_BUSY_TIMEOUT_MS", SQLITE_BUSY_TIMEOUT_MS))

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def is_sqlite(engine: sa.Engine) -> bool:
    return engine.dialect.name == "sqlite"
