"""``setia serve --workers N``: N server processes, each listening on its own socket bound
to the same address with ``SO_REUSEPORT``, so that the kernel spreads new connections over
them from the first connection on.

uvicorn's own ``--workers`` shares one listening socket among its processes, and whichever
process wakes first accepts: under a load of keep-alive clients that connect at once (tills
after a restart, a load generator) one process took 15 of 16 connections, and the second
process added nothing. With a socket each, the kernel assigns each connection to one of the
sockets by a hash of its addresses and ports.

The parent only supervises: it starts the workers (fresh interpreters, as uvicorn's do),
stops them all on SIGINT or SIGTERM (each finishes its requests in flight), and replaces a
worker that exits after it ran for ``SETTLED_SECONDS``. A worker that exits sooner (it could
not bind, or not reach the database) stops the others, and the parent exits with 1. Where
the platform has no ``SO_REUSEPORT``, uvicorn's supervisor runs instead."""

from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
import threading
import time
from multiprocessing.process import BaseProcess
from typing import Any

log = logging.getLogger("setia.workers")

APP = "setia.entrypoints.api.app:app_from_env"
SETTLED_SECONDS = 10.0  # a worker that ran this long is replaced when it exits
STOP_SECONDS = 30.0  # for the workers' requests in flight, then they are killed
POLL_SECONDS = 0.2
BACKLOG = 2048  # uvicorn's


def reuse_port_supported() -> bool:
    return hasattr(socket, "SO_REUSEPORT")


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket listening on ``host:port`` that other sockets may listen on too
    (SO_REUSEPORT); uvicorn's backlog."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def worker(sock: socket.socket, host: str, port: int, options: dict[str, Any]) -> None:
    """One server process (the spawned child): its socket, the app from the environment."""
    import uvicorn

    from setia.entrypoints.observability import configure_logging

    configure_logging()
    config = uvicorn.Config(APP, factory=True, host=host, port=port, **options)
    uvicorn.Server(config).run(sockets=[sock])


def run_workers(host: str, port: int, count: int, options: dict[str, Any]) -> int:
    """Serve with ``count`` worker processes until SIGINT or SIGTERM; the exit status (0, or
    1 when a worker failed soon after it started)."""
    # Every worker's socket listens before any worker starts, so that from the first
    # connection on the kernel spreads them over all (a worker still starting takes up its
    # share when it is up); an address in use fails here.
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sockets.append(listening_socket(host, port))
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", host, port, exc.strerror or exc)
        for sock in sockets:
            sock.close()
        return 1
    context = multiprocessing.get_context("spawn")
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}

    def start(index: int) -> tuple[BaseProcess, float]:
        process = context.Process(target=worker, args=(sockets[index], host, port, options),
                                  name="setia-api-worker")
        process.start()
        log.info("started worker process %s", process.pid)
        return process, time.monotonic()

    workers = [start(index) for index in range(count)]
    status = 0
    try:
        while not stop.wait(POLL_SECONDS):
            for index, (process, started) in enumerate(workers):
                if process.is_alive():
                    continue
                if time.monotonic() - started < SETTLED_SECONDS:
                    log.error("worker process %s exited with %s right after it started; "
                              "stopping", process.pid, process.exitcode)
                    status = 1
                    stop.set()
                    break
                log.warning("worker process %s exited with %s; starting another",
                            process.pid, process.exitcode)
                workers[index] = start(index)  # on the same socket
    finally:
        for process, _ in workers:
            if process.is_alive():
                process.terminate()  # SIGTERM: uvicorn finishes what is in flight
        deadline = time.monotonic() + STOP_SECONDS
        for process, _ in workers:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
        for sock in sockets:
            sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status
