"""``setia referrals``: the review queue, approve and reject."""

from __future__ import annotations

import uuid
from typing import Annotated

import typer
from rich.table import Table

from setia.domain.errors import SetiaError
from setia.entrypoints.cli import _explain, console, engine, fail

app: typer.Typer = typer.Typer(help="Referrals: the review queue.", no_args_is_help=True)


@app.command("queue")
def queue(
    program: Annotated[str, typer.Option("--program", "-p", help="programme id")],
    status: Annotated[str, typer.Option(help="review, linked, qualified, paid, ...")] = "review",
) -> None:
    """Referrals waiting for a decision (or of another status), oldest first."""
    from setia.service.referrals import listing

    try:
        found = listing(engine(), program, status, 500)
    except SetiaError as exc:
        fail(_explain(exc))
    table = Table(title=f"referrals: {status} ({len(found)})")
    for column in ("id", "referrer", "referee", "created", "order", "guards"):
        table.add_column(column)
    for item in found:
        table.add_row(item["id"], item["referrer"], item["referee"], item["created_at"],
                      item["order_id"] or "", "; ".join(item["guards"]))
    console.print(table)


def _decide(referral: str, program: str, decision: str, reason: str | None) -> None:
    from setia.service.referrals import decide

    try:
        result = decide(engine(), program, referral, decision,
                        {"reason": reason} if reason else None, f"cli-{uuid.uuid4()}")
    except SetiaError as exc:
        fail(_explain(exc))
    console.print(f"referral {referral} is now {result['status']}")


@app.command("approve")
def approve(
    referral: Annotated[str, typer.Argument(help="referral id (rfl_...)")],
    program: Annotated[str, typer.Option("--program", "-p", help="programme id")],
    reason: Annotated[str | None, typer.Option(help="why (kept with the referral)")] = None,
) -> None:
    """Let a referral in review pay (now, if its purchase is past the pending period)."""
    _decide(referral, program, "approve", reason)


@app.command("reject")
def reject(
    referral: Annotated[str, typer.Argument(help="referral id (rfl_...)")],
    program: Annotated[str, typer.Option("--program", "-p", help="programme id")],
    reason: Annotated[str | None, typer.Option(help="why (kept with the referral)")] = None,
) -> None:
    """Refuse a referral in review: it never pays."""
    _decide(referral, program, "reject", reason)
