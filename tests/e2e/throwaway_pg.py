"""A PostgreSQL server of our own (initdb + pg_ctl in a temp directory, on a free port)
for tests that stop or restart the database: the machine's shared server is never
touched."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.receivers import free_port

BIN = Path(os.environ.get("SETIA_PG_BIN", "/usr/lib/postgresql/15/bin"))


@dataclass
class Cluster:
    url: str
    data: Path
    log: Path
    port: int
    socket_dir: Path
    prefix: list[str]

    def _ctl(self, *args: str) -> None:
        subprocess.run([*self.prefix, str(BIN / "pg_ctl"), "-D", str(self.data), "-l",
                        str(self.log), "-w", "-t", "60", *args], check=True,
                       capture_output=True, timeout=90)

    def start(self) -> None:
        self._ctl("-o", f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 "
                  "-c fsync=off -c max_connections=200", "start")

    def stop(self, mode: str = "fast") -> None:
        self._ctl("-m", mode, "stop")


@contextmanager
def throwaway_postgres() -> Iterator[Cluster]:
    if not (BIN / "initdb").exists():
        reason = f"no PostgreSQL binaries in {BIN}"
        if os.environ.get("SETIA_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    directory = Path(tempfile.mkdtemp(prefix="setia-pg-"))
    prefix: list[str] = []
    if os.getuid() == 0:  # initdb refuses to run as root
        owner = pwd.getpwnam("postgres")
        os.chown(directory, owner.pw_uid, owner.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data = directory / "data"
    port = free_port()
    cluster = Cluster(f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres", data,
                      directory / "server.log", port, directory, prefix)
    try:
        subprocess.run([*prefix, str(BIN / "initdb"), "-D", str(data), "-U", "postgres",
                        "--auth=trust", "-E", "UTF8", "--no-sync"], check=True,
                       capture_output=True, timeout=120)
        cluster.start()
        yield cluster
    finally:
        with suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            cluster.stop("immediate")
        shutil.rmtree(directory, ignore_errors=True)
