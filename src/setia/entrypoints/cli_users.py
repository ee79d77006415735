"""``setia users``: staff accounts of the web pages (owner or cashier)."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from setia.domain.errors import SetiaError

users_app = typer.Typer(help="Staff accounts of the web pages.", no_args_is_help=True)
console = Console()
errors = Console(stderr=True)


def _engine() -> Any:
    from setia.entrypoints.cli import engine

    return engine()


@users_app.command("create")
def users_create(
    username: Annotated[str, typer.Argument(help="lower-case letters, digits, . _ -")],
    role: Annotated[str, typer.Option(help="owner (every page) or cashier (cashier screen)")],
    program: Annotated[str | None, typer.Option("--program", "-p",
                                                help="limit the account to one programme")] = None,
    password_stdin: Annotated[bool, typer.Option(
        "--password-stdin", help="read the password from standard input (for scripts)")] = False,
) -> None:
    """Create a staff account; the password is asked for twice (or read from stdin)."""
    from setia.service.staff import create_user

    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    try:
        created = create_user(_engine(), username, password, role, program)
    except SetiaError as exc:
        errors.print(f"error: {exc.detail}", markup=False, highlight=False)
        raise typer.Exit(1) from None
    console.print(f"{created['role']} {created['username']} created"
                  + (f" for programme {program}" if program else ""), markup=False)


@users_app.command("list")
def users_list() -> None:
    """List the staff accounts."""
    from setia.service.staff import list_users

    table = Table("username", "role", "programme", "disabled")
    for user in list_users(_engine()):
        table.add_row(user["username"], user["role"], user["program"] or "(all)",
                      "yes" if user["disabled"] else "no")
    console.print(table)


@users_app.command("disable")
def users_disable(username: Annotated[str, typer.Argument(help="the account to disable")]) -> None:
    """Disable a staff account: its sessions end and it can no longer sign in."""
    from setia.service.staff import disable_user

    try:
        disable_user(_engine(), username)
    except SetiaError as exc:
        errors.print(f"error: {exc.detail}", markup=False, highlight=False)
        raise typer.Exit(1) from None
    console.print(f"{username} disabled", markup=False)
