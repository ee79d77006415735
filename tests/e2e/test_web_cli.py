"""``setia users``: create (password from stdin), list, disable; errors exit 1 with one line."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.e2e.api_server import SETIA, run_setia, setia_env


def users(db_url: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([SETIA, "users", *args], env=setia_env(db_url), input=stdin,
                          capture_output=True, text=True, timeout=120, check=False)


def test_users_commands(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'users.db'}"
    created = users(db_url, "create", "ana", "--role", "owner", "--password-stdin",
                    stdin="a-long-password\n")
    assert (created.returncode, created.stdout) == (0, "owner ana created\n")
    long = "a-long-password\n"  # short passwords: tests/integration/test_web_accounts.py
    for args, stdin, reason in [
        (("create", "ana", "--role", "owner", "--password-stdin"), long,
         "error: user 'ana' already exists\n"),
        (("create", "bo", "--role", "boss", "--password-stdin"), long,
         "error: role must be one of owner, cashier\n"),
        (("create", "bo", "--role", "cashier", "-p", "nope", "--password-stdin"), long,
         "error: no programme 'nope'\n"),
        (("disable", "nobody"), "", "error: no enabled user 'nobody'\n"),
    ]:
        failed = users(db_url, *args, stdin=stdin)
        assert (failed.returncode, failed.stderr) == (1, reason), args
    assert users(db_url, "disable", "ana").stdout == "ana disabled\n"
    listed = users(db_url, "list").stdout
    assert "ana" in listed and "owner" in listed and "yes" in listed
    helped = run_setia(db_url, "users", "--help")
    assert helped.returncode == 0
    assert all(command in helped.stdout for command in ("create", "list", "disable"))
