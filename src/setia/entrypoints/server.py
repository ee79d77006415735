"""``setia serve``: the API under uvicorn, with run-due every minute in a background thread."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
import uvicorn

from setia.entrypoints.api.app import create_app, freeze_startup_heap, hand_over_gil_sooner
from setia.entrypoints.api.protocol import JoinedWritesProtocol
from setia.entrypoints.observability import configure_logging
from setia.service.run_due import run_due

SCHEDULE_SECONDS = 60
# uvicorn's settings: httptools with a response's head and body in one write
# (api/protocol.py), uvloop, no access log (front.Front logs one JSON line per request).
UVICORN: dict[str, Any] = {"http": JoinedWritesProtocol, "loop": "uvloop", "log_level": "info",
                           "access_log": False, "log_config": None}
log = logging.getLogger("setia.scheduler")


class Scheduler:
    """Runs due work every minute until stopped; one failed run never stops the next."""

    def __init__(self, engine: sa.Engine, every_seconds: float = SCHEDULE_SECONDS) -> None:
        self.engine = engine
        self.every_seconds = every_seconds
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="setia-run-due", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=30)

    def _loop(self) -> None:
        while not self.stopped.wait(self.every_seconds):
            try:
                report = run_due(self.engine, datetime.now(UTC))
                log.info("run-due: %s", report.as_dict())
            except Exception:  # noqa: BLE001 - logged; the next minute tries again
                log.exception("run-due failed")


def serve(engine: sa.Engine, host: str, port: int, *, scheduler: bool, workers: int = 1) -> None:
    """Serve until stopped. With several workers uvicorn starts processes that build the
    app from SETIA_DATABASE_URL; run-due stays in this process, once."""
    configure_logging()  # JSON lines with request ids
    background = Scheduler(engine) if scheduler else None
    if background:
        background.start()
    try:
        if workers > 1:
            uvicorn.run("setia.entrypoints.api.app:app_from_env", factory=True, host=host,
                        port=port, workers=workers, **UVICORN)
        else:
            app = create_app(engine)
            freeze_startup_heap()
            hand_over_gil_sooner()
            uvicorn.run(app, host=host, port=port, **UVICORN)
    finally:
        if background:
            background.stop()
