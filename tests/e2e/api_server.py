"""A real ``setia serve`` in a subprocess, for the end-to-end HTTP tests.

``live_server(db_url)`` starts the installed console script on a free port with
SETIA_DATABASE_URL and SETIA_ADMIN_KEY in its environment, waits (bounded) for
``/health``, and stops the process afterwards. ``database_url(kind, directory)``
gives a fresh SQLite file or a scratch PostgreSQL database. The helpers here
also run other ``setia`` commands against the same database (keys, check) and
assert the shape every problem answer must have.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from setia.adapters.db.engine import make_engine
from tests.conftest import scratch_postgres_database

ADMIN_KEY = "e2e-admin-key-0123456789"
PROBLEM_TYPE = "https://setia.dev/problems/"
STARTUP_SECONDS = 90.0  # generous: a loaded 2-core machine takes 30 s+ to start and migrate

# The programme of the HTTP tests (tests/e2e/test_api.py explains it).
CAFE_PROGRAMME: dict[str, Any] = {
    "id": "e2e-cafe",
    "name": "E2E Cafe",
    "currency": "MYR",
    "timezone": "Asia/Kuala_Lumpur",
    "locale": "en",
    "auto_enroll": False,
    "points": {"name": "Beans", "pending_days": 0, "expiry": {"policy": "none"}},
    "earn": [
        {"id": "base", "on": "purchase", "rate": 1},
        {"id": "pastry-bonus", "on": "purchase", "categories": ["pastry"], "rate": 1},
        {"id": "app-orders", "on": "purchase", "channels": ["app"], "rate": "0.5"},
        {"id": "kl-bonus", "on": "purchase", "stores": ["kl-01"], "rate": 2},
        {"id": "weekend", "on": "purchase", "days": ["sat", "sun"], "rate": 1},
        {"id": "first-visit", "on": "purchase", "first_purchase": True,
         "min_amount": "10.00", "points": 100},
        {"id": "welcome", "on": "signup", "points": 50},
        {"id": "review", "on": "review", "points": 5, "limit": {"count": 3, "per": "month"}},
    ],
    "tiers": {
        "metric": "spend",
        "window": "calendar_year",
        "levels": [
            {"id": "member", "name": "Member", "threshold": 0},
            {"id": "gold", "name": "Gold", "threshold": 350, "multiplier": "1.25"},
        ],
    },
    "rewards": [
        {"id": "free-latte", "name": "Free latte", "cost": 150,
         "voucher": {"free_item": "latte", "valid_days": 30}},
        {"id": "mug", "name": "Mug", "cost": 100, "stock": 1,
         "voucher": {"amount_off": "5.00", "valid_days": 1}},
        {"id": "cap", "name": "Cap", "cost": 100, "per_member_limit": 1},
        {"id": "gold-gift", "name": "Gold gift", "cost": 100, "tiers": ["gold"]},
        {"id": "future-gift", "name": "Future gift", "cost": 10, "from": "2099-01-01"},
        {"id": "past-gift", "name": "Past gift", "cost": 10, "until": "2000-01-01"},
    ],
}


def setia_script() -> str:
    """The installed console script: next to the running interpreter, else on PATH."""
    beside = Path(sys.executable).parent / "setia"
    if beside.exists():
        return str(beside)
    found = shutil.which("setia")
    assert found, "the setia console script is not installed (pip install -e .)"
    return found


SETIA = setia_script()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def setia_env(db_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["SETIA_DATABASE_URL"] = db_url
    env.update(extra)
    return env


def run_setia(db_url: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``setia ARGS`` against db_url; exit code and output, never raises on failure."""
    return subprocess.run(
        [SETIA, *args], env=setia_env(db_url), capture_output=True, text=True,
        timeout=timeout, stdin=subprocess.DEVNULL, check=False,
    )


def create_key(db_url: str, scope: str, program: str | None = None) -> str:
    """A key from ``setia keys create``: it stands alone on the last line of stdout."""
    args = ["keys", "create", "--scope", scope] + (["--program", program] if program else [])
    result = run_setia(db_url, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def assert_setia_check_ok(db_url: str) -> None:
    result = run_setia(db_url, "check")
    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "journal ok" in result.stdout


@contextmanager
def database_url(kind: str, directory: Path, prefix: str = "setia_e2e") -> Iterator[str]:
    """A fresh, empty database: a SQLite file in directory, or a scratch PostgreSQL one."""
    if kind == "sqlite":
        yield f"sqlite:///{directory / 'setia.db'}"
    else:
        with scratch_postgres_database(prefix) as url:
            yield url


@dataclass
class LiveServer:
    base_url: str
    db_url: str
    admin_key: str
    process: subprocess.Popen[bytes]
    log_path: Path
    engine: sa.Engine

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=30.0)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def postings(self) -> int:
        """Rows in the journal."""
        with self.engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM postings")).scalar_one())


def _wait_for_health(process: subprocess.Popen[bytes], base_url: str, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"setia serve exited with {process.returncode}:\n{log_path.read_text()}"
            )
        try:
            if httpx.get(f"{base_url}/health", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)  # polling a starting process; the tests themselves never sleep
    raise AssertionError(f"setia serve did not answer /health in {STARTUP_SECONDS} s:\n"
                         f"{log_path.read_text()}")


@contextmanager
def live_server(db_url: str, log_dir: Path, admin_key: str = ADMIN_KEY) -> Iterator[LiveServer]:
    """``setia serve --no-scheduler`` on a free port until the block ends."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    log_path = log_dir / f"serve-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [SETIA, "serve", "--no-scheduler", "--host", "127.0.0.1", "--port", str(port)],
            env=setia_env(db_url, SETIA_ADMIN_KEY=admin_key),
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    engine = make_engine(db_url)
    try:
        _wait_for_health(process, base_url, log_path)
        yield LiveServer(base_url, db_url, admin_key, process, log_path, engine)
    finally:
        engine.dispose()
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


def assert_problem(response: httpx.Response, status: int, slug: str,
                   field: str | None = None) -> dict[str, Any]:
    """An RFC 9457 problem of this status and type, naming field, without a stack trace."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json", response.headers
    assert "Traceback" not in response.text
    assert 'File "' not in response.text
    body: dict[str, Any] = response.json()
    assert body["type"] == PROBLEM_TYPE + slug, body
    assert body["status"] == status
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    if field is not None:
        assert body.get("field") == field, body
    return body
