"""``setia campaigns`` and ``setia membership``: what an operator asks of campaigns,
stamp cards and paid memberships (docs/engagement.md)."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.table import Table

from setia.domain.errors import SetiaError

campaigns_app = typer.Typer(help="Campaigns: budgets and reach.", no_args_is_help=True)
membership_app = typer.Typer(help="Paid memberships and stamp cards of a member.",
                             no_args_is_help=True)

Program = Annotated[str, typer.Option("--program", "-p", help="programme id")]
AsJson = Annotated[bool, typer.Option("--json", help="print the API's JSON")]


def _run(fn: Any, *args: Any) -> Any:
    from setia.entrypoints import cli

    try:
        return fn(cli.engine(), *args)
    except SetiaError as exc:
        cli.fail(cli._explain(exc))


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")


@campaigns_app.command("report")
def campaigns_report(program: Program, as_json: AsJson = False) -> None:
    """Every campaign with its budget used and left, awards, members reached, hold-outs."""
    from setia.entrypoints import cli
    from setia.service.engagement_views import list_campaigns

    report = _run(list_campaigns, program)
    if as_json:
        _print_json(report)
        return
    table = Table(title=f"campaigns of {program}")
    for column in ("campaign", "window", "effect", "budget used", "budget left", "awards",
                   "members", "points kept", "vouchers", "hold-outs"):
        table.add_column(column, justify="left" if column in ("campaign", "window", "effect")
                         else "right")
    for c in report["campaigns"]:
        window = f"{c['from'] or '…'} – {c['until'] or '…'}"
        table.add_row(c["id"], window, c["effect"], str(c["budget_used"]),
                      "-" if c["budget_left"] is None else str(c["budget_left"]),
                      str(c["awards"]), str(c["members"]), str(c["points_kept"]),
                      str(c["vouchers"]), str(c["holdouts"]))
    cli.console.print(table)


@membership_app.command("show")
def membership_show(member: Annotated[str, typer.Argument(help="member id")], program: Program,
                    as_json: AsJson = False) -> None:
    """The member's paid membership (plan, end, every purchase with its fee) and stamp cards."""
    from setia.entrypoints import cli
    from setia.service.engagement_views import member_stamp_cards
    from setia.service.memberships import get_membership

    view = _run(get_membership, program, member)
    cards = _run(member_stamp_cards, program, member)
    if as_json:
        _print_json({"membership": view, "stamp_cards": cards["stamp_cards"]})
        return
    table = Table(title=f"member {member}: membership {view['status']}", show_header=True)
    for column in ("purchase", "plan", "kind", "fee", "starts", "ends", "status"):
        table.add_column(column)
    for row in view["purchases"]:
        table.add_row(row["id"], row["plan"], row["kind"], f"{row['currency']} {row['fee']}",
                      row["starts_at"], row["ends_at"], row["status"])
    cli.console.print(table)
    stamps = Table(title="stamp cards")
    for column in ("card", "period", "stamps", "target", "completions"):
        stamps.add_column(column)
    for card in cards["stamp_cards"]:
        stamps.add_row(card["id"], card["period"], str(card["stamps"]), str(card["target"]),
                       str(card["completions"]))
    cli.console.print(stamps)
