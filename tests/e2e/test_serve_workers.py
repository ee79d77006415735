"""``setia serve --workers N``: each worker process listens on its own socket (SO_REUSEPORT),
so the connections of clients that connect at once are spread over the workers; SIGTERM
stops them all; an address that cannot be used stops serve with one error line."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

import httpx

from tests.e2e.api_server import SETIA, STARTUP_SECONDS, free_port, setia_env
from tests.e2e.test_cli import one_error_line

WORKERS = 2
CLIENTS = 16
ROUNDS = 3


def worker_processes(pid: int) -> list[int]:
    """The process's children started by multiprocessing's spawn (not its resource
    tracker, also a child)."""
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()]


def established_by_process(pids: list[int], port: int) -> Counter[int]:
    """How many established TCP connections to ``port`` each process holds (from /proc)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01":  # ESTABLISHED
                inodes.add(fields[9])
    held: Counter[int] = Counter()
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue  # closed meanwhile
            if target.startswith("socket:[") and target[8:-1] in inodes:
                held[pid] += 1
    return held


def wait_until_serving(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    """Until /health answers: one worker is up, the others may still be starting."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)  # polling a starting process
    raise AssertionError(f"not serving in {STARTUP_SECONDS} s:\n{log.read_text()}")


def test_workers_share_the_connections_and_stop_together(tmp_path: Path) -> None:
    # Given setia serve with two workers
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [SETIA, "serve", "--no-scheduler", "--port", str(port), "--workers", str(WORKERS)],
            env=setia_env(f"sqlite:///{tmp_path / 'serve.db'}"), stdout=out,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    clients: list[socket.socket] = []
    try:
        wait_until_serving(process, url, log)
        workers = worker_processes(process.pid)
        assert len(workers) == WORKERS

        for _ in range(ROUNDS):
            # When 16 clients connect at once, as soon as serve answers (tills waiting for
            # it to come back), then each sends a request and keeps its connection
            clients.extend(socket.create_connection(("127.0.0.1", port),
                                                    timeout=STARTUP_SECONDS)
                           for _ in range(CLIENTS))
            for client in clients:
                client.sendall(b"GET /health HTTP/1.1\r\nHost: setia\r\n\r\n")
            for client in clients:
                assert client.recv(65536).startswith(b"HTTP/1.1 200 ")

            # Then every connection is held by a worker, and each worker holds some: the
            # kernel picks a worker's socket by a hash of the client's address and port
            # (all 16 on one has a chance of 2**-15), and each socket listens from the
            # start. With one socket shared, as uvicorn has it, the worker up first took
            # them all while the other was starting.
            held = established_by_process(workers, port)
            assert sum(held.values()) == CLIENTS, held
            assert sorted(held) == sorted(workers), held
            for client in clients:
                client.close()
            clients.clear()
    finally:
        for client in clients:
            client.close()
        # When serve is stopped
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)

    # Then it exits 0 and its workers are gone
    assert code == 0, log.read_text()
    for pid in workers:
        assert not os.path.exists(f"/proc/{pid}") or "zombie" in Path(
            f"/proc/{pid}/status").read_text()


def test_workers_on_an_address_in_use_stop_serve_with_one_line(tmp_path: Path) -> None:
    # Given a port another program listens on (without SO_REUSEPORT)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        # When setia serve with two workers is started on it
        result = subprocess.run(
            [SETIA, "serve", "--no-scheduler", "--port", str(port), "--workers", "2"],
            env=setia_env(f"sqlite:///{tmp_path / 'serve.db'}"), capture_output=True,
            text=True, timeout=120, stdin=subprocess.DEVNULL, check=False)

    # Then it exits 1 with one line saying why, after the log line naming the address
    assert result.returncode == 1
    assert one_error_line(result) == (
        "error: the server stopped: it could not listen, or a worker process exited right "
        "after it started (the log lines above say why)")
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
