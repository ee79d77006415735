"""``setia credit ...`` (store credit) and ``setia settlement`` (coalition partners)."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

credit_app = typer.Typer(help="Store credit: balances, statements and corrections.",
                         no_args_is_help=True)


def _cli() -> Any:
    from setia.entrypoints import cli

    return cli


@credit_app.command("show")
def credit_show(
    member: Annotated[str, typer.Argument(help="member id")],
    program: Annotated[str, typer.Option("--program", "-p", help="programme id")],
) -> None:
    """A member's store credit: available and reserved (held at a till)."""
    from setia.domain.errors import SetiaError
    from setia.service.store_credit import balance

    cli = _cli()
    try:
        view = balance(cli.engine(), program, member)
    except SetiaError as exc:
        cli.fail(cli._explain(exc))
    sys.stdout.write(json.dumps(view, indent=2, ensure_ascii=False) + "\n")


@credit_app.command("statement")
def credit_statement(
    member: Annotated[str, typer.Argument(help="member id")],
    program: Annotated[str, typer.Option("--program", "-p", help="programme id")],
    period: Annotated[str, typer.Option("--period", help="2027-03, 2027-Q1 or 2027")],
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV instead of JSON")] = False,
) -> None:
    """A member's store-credit statement for a period: opening balance, earned, clawed
    back, spent, closing balance and every line (JSON, or CSV with --csv)."""
    from setia.domain.errors import SetiaError
    from setia.service.store_credit import statement, statement_csv

    cli = _cli()
    try:
        view = statement(cli.engine(), program, member, period)
    except SetiaError as exc:
        cli.fail(cli._explain(exc))
    if as_csv:
        sys.stdout.write(statement_csv(view))
    else:
        sys.stdout.write(json.dumps(view, indent=2, ensure_ascii=False) + "\n")


@credit_app.command("adjust")
def credit_adjust(
    member: Annotated[str, typer.Argument(help="member id")],
    program: Annotated[str, typer.Option("--program", "-p", help="programme id")],
    amount: Annotated[str, typer.Option(help="e.g. 5.00, or -2.50 to take credit back")],
    reason: Annotated[str, typer.Option(help="why (kept in the journal and the audit log)")],
    key: Annotated[str | None, typer.Option(
        help="idempotency key: the same key again changes nothing (default: a new one)")] = None,
) -> None:
    """Correct a member's store credit by an amount, with a reason; never below zero."""
    import secrets

    from setia.domain.errors import SetiaError
    from setia.service.store_credit import adjust

    cli = _cli()
    try:
        view = adjust(cli.engine(), program, {"member": member, "amount": amount,
                                              "reason": reason},
                      key or f"cli-{secrets.token_hex(8)}")
    except SetiaError as exc:
        cli.fail(cli._explain(exc))
    sys.stdout.write(json.dumps(view, indent=2, ensure_ascii=False) + "\n")


def settlement_command(
    program: Annotated[str, typer.Option("--program", "-p", help="programme id")],
    period: Annotated[str, typer.Option("--period", help="2027-03, 2027-Q1 or 2027")],
    as_json: Annotated[bool, typer.Option("--json", help="print the API's settlement")] = False,
) -> None:
    """What each coalition partner owes or is owed for the points issued and burned in a
    period, at the programme's value per point; the totals reconcile to zero."""
    from rich.table import Table

    from setia.domain.errors import SetiaError
    from setia.service.partners import settlement

    cli = _cli()
    try:
        view = settlement(cli.engine(), program, period)
    except SetiaError as exc:
        cli.fail(cli._explain(exc))
    if as_json:
        sys.stdout.write(json.dumps(view, indent=2, ensure_ascii=False) + "\n")
        return
    table = Table(title=f"settlement {view['program']} {view['period']} "
                        f"({view['currency']}, 1 point = {view['point_value']})")
    for column, justify in (("account", "left"), ("points issued", "right"),
                            ("points burned", "right"), ("position", "left"),
                            ("amount", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for row in view["accounts"]:
        table.add_row(row["account"], str(row["points_issued"]), str(row["points_burned"]),
                      row["position"], row["amount"])
    table.add_row("total", "", "", "", view["total"])
    cli.console.print(table)
