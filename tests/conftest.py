"""Shared fixtures: a fresh database per test on SQLite and on real PostgreSQL.

PostgreSQL comes from SETIA_TEST_DATABASE_URL (default the local server's
``test`` database). One scratch database is created per test session and
emptied between tests. Where no server answers, PostgreSQL tests skip with a
loud reason, unless SETIA_REQUIRE_POSTGRES=1 (CI), where they fail.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from setia.adapters.db import tables
from setia.adapters.db.engine import make_engine
from setia.adapters.db.migrate import upgrade
from setia.service.check import check
from setia.service.programmes import parse_text, store_programme

ROOT = Path(__file__).resolve().parents[1]
KOPI_SETIA = ROOT / "examples" / "programs" / "kopi-setia.yaml"
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def at(text: str) -> datetime:
    """A time with an offset, e.g. at("2027-03-01T10:00:00+08:00")."""
    moment = datetime.fromisoformat(text)
    assert moment.tzinfo is not None
    return moment


def fixed_clock(text: str) -> Any:
    moment = at(text)
    return lambda: moment


def assert_journal_ok(engine: sa.Engine) -> None:
    """Zero sum per asset, cached balances equal the journal, lots equal balances."""
    report = check(engine)
    assert report.problems == []


def load_programme(engine: sa.Engine, document: dict[str, Any] | str | Path) -> dict[str, Any]:
    if isinstance(document, Path):
        document = parse_text(document.read_text())
    elif isinstance(document, str):
        document = parse_text(document)
    return store_programme(engine, document)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()
    return path


@contextmanager
def scratch_postgres_database(prefix: str) -> Iterator[str]:
    """A database of our own on the test server, dropped afterwards; its URL.

    Skips loudly where no server answers, or fails under SETIA_REQUIRE_POSTGRES=1 (CI)."""
    base = os.environ.get("SETIA_TEST_DATABASE_URL", DEFAULT_PG)
    try:
        admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text("select 1"))
    except Exception as exc:  # noqa: BLE001 - any failure to connect means "no server"
        reason = f"PostgreSQL at {base} does not answer ({type(exc).__name__}): tests SKIPPED"
        if os.environ.get("SETIA_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason.replace("SKIPPED", "REQUIRED by SETIA_REQUIRE_POSTGRES=1"))
        pytest.skip(reason)
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.make_url(base).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with scratch_postgres_database("setia_test") as url:
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        yield url


def _truncate(engine: sa.Engine) -> None:
    names = ", ".join(table.name for table in tables.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(sa.text(f"TRUNCATE {names} RESTART IDENTITY"))


@pytest.fixture
def sqlite_engine(sqlite_template: Path, tmp_path: Path) -> Iterator[sa.Engine]:
    path = tmp_path / "setia.db"
    shutil.copy(sqlite_template, path)
    engine = make_engine(f"sqlite:///{path}")
    yield engine
    engine.dispose()


@pytest.fixture
def pg_engine(postgres_url: str) -> Iterator[sa.Engine]:
    engine = make_engine(postgres_url)
    _truncate(engine)
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest) -> sa.Engine:
    """The same test on SQLite and on PostgreSQL."""
    name = "sqlite_engine" if request.param == "sqlite" else "pg_engine"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


@pytest.fixture
def kopi(engine: sa.Engine) -> sa.Engine:
    """An engine with the Kopi Setia programme stored as version 1."""
    load_programme(engine, KOPI_SETIA)
    return engine


def wait_for_lock_waiters(engine: sa.Engine, count: int = 1, *, statement_like: str = "%",
                          seconds: float = 30.0) -> int:
    """Wait until ``count`` sessions of this database (PostgreSQL) wait for a lock, running
    a statement ``LIKE statement_like``; answers how many do (at least ``count``), or fails
    after ``seconds``."""
    deadline = time.monotonic() + seconds
    query = sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND query LIKE :like")
    while True:
        with engine.connect() as conn:
            waiting = int(conn.execute(query, {"like": statement_like}).scalar_one())
        if waiting >= count:
            return waiting
        assert time.monotonic() < deadline, f"{count} session(s) never waited for a lock"
        time.sleep(0.02)
