"""CLI of operations and trust: ``setia privacy ...``, ``setia fraud ...``, ``setia audit``,
``setia member token`` and ``setia db partitions``. Registered by ``register`` (one call
at the bottom of cli.py)."""

from __future__ import annotations

import json
import secrets
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from setia.domain.errors import SetiaError
from setia.entrypoints.cli import _explain, console, engine, errors, fail, os_reason

privacy_app = typer.Typer(help="Privacy: export, erase, event retention.", no_args_is_help=True)
fraud_app = typer.Typer(help="The fraud review queue.", no_args_is_help=True)

Program = Annotated[str, typer.Option("--program", "-p", help="programme id")]


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


@privacy_app.command("export")
def privacy_export(
    member: Annotated[str, typer.Argument(help="member id")],
    program: Program,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="write to this file")] = None,
) -> None:
    """Everything stored about one member, as JSON (a subject access request)."""
    from setia.service.privacy import export_member

    try:
        data = export_member(engine(), program, member)
    except SetiaError as exc:
        fail(_explain(exc))
    if out is None:
        _print_json(data)
        return
    try:
        out.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n",
                       encoding="utf-8")
    except OSError as exc:
        fail(f"cannot write {out}: {os_reason(exc)}")
    errors.print(f"wrote {out}")


@privacy_app.command("erase")
def privacy_erase(
    member: Annotated[str, typer.Argument(help="member id")],
    program: Program,
    yes: Annotated[bool, typer.Option("--yes", help="confirm: this cannot be undone")] = False,
    key: Annotated[str | None, typer.Option(
        "--key", help="idempotency key: run again with the same key, the first result "
                      "answers (default: a new random key each run)")] = None,
) -> None:
    """Pseudonymise a member: profile cleared, id replaced; balances and journal kept."""
    from setia.service.privacy import erase_member

    if not yes:
        fail("erasure cannot be undone; add --yes to confirm")
    # A fresh key per run, never one made from the member id: the id may be enrolled
    # again after an erasure (docs/privacy.md), and erasing it then must erase the new
    # member, not replay the first erasure. Retries within this run reuse the key.
    try:
        result = erase_member(engine(), program, member,
                              key if key is not None else f"cli:erase:{secrets.token_hex(16)}")
    except SetiaError as exc:
        fail(_explain(exc))
    console.print(f"member erased; now {result['member']} "
                  f"(cleared: {', '.join(result['cleared']) or 'nothing'})")


@privacy_app.command("prune")
def privacy_prune(
    as_of: Annotated[str | None, typer.Option("--as-of", help="ISO time (default now)")] = None,
) -> None:
    """Delete stored events older than each programme's privacy.event_retention_months."""
    from setia.domain.events import parse_time
    from setia.service.privacy import prune_events

    try:
        moment = parse_time(as_of, "as_of") if as_of else datetime.now(UTC)
        deleted = prune_events(engine(), moment)
    except SetiaError as exc:
        fail(_explain(exc))
    for program_id, count in sorted(deleted.items()):
        console.print(f"{program_id}: {count} event(s) deleted")


@fraud_app.command("reviews")
def fraud_reviews(
    program: Program,
    status: Annotated[str, typer.Option(help="open | approved | rejected")] = "open",
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """The review queue: events whose points a fraud rule held."""
    from setia.service.fraud import reviews

    try:
        rows = reviews(engine(), program, status)
    except SetiaError as exc:
        fail(_explain(exc))
    if as_json:
        _print_json(rows)
        return
    table = Table("id", "member", "event", "points", "held", "reasons", title=f"{status} reviews")
    for row in rows:
        table.add_row(str(row["id"]), row["member"], row["event"], str(row["points"]),
                      "yes" if row["held"] else "no", "; ".join(row["reasons"]))
    console.print(table)


def _decide(program: str, review: int, decision: str) -> None:
    from setia.service.fraud import decide

    try:
        result = decide(engine(), program, review, decision, f"cli:{decision}:{review}")
    except SetiaError as exc:
        fail(_explain(exc))
    console.print(f"review {review} {result['status']}; balances {result['balances']}")


@fraud_app.command("approve")
def fraud_approve(review: Annotated[int, typer.Argument(help="review id", min=1, max=2**63 - 1)],
                  program: Program) -> None:
    """Release the held points (available when they were due)."""
    _decide(program, review, "approve")


@fraud_app.command("reject")
def fraud_reject(review: Annotated[int, typer.Argument(help="review id", min=1, max=2**63 - 1)],
                 program: Program) -> None:
    """Take the held points back."""
    _decide(program, review, "reject")


def audit_list(
    program: Annotated[str | None, typer.Option("--program", "-p", help="programme id")] = None,
    after: Annotated[int, typer.Option(help="show rows after this id", min=0,
                                       max=2**63 - 1)] = 0,
    limit: Annotated[int, typer.Option(help="rows to show (1 to 500)", min=1, max=500)] = 100,
) -> None:
    """The audit log of admin actions, oldest first, as JSON Lines."""
    from setia.service.audit import entries

    try:
        rows = entries(engine(), program, after_id=after, limit=limit)
    except SetiaError as exc:
        fail(_explain(exc))
    for row in rows:
        sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")


def member_token(
    member: Annotated[str, typer.Argument(help="member id")],
    program: Program,
    days: Annotated[int, typer.Option(help="valid for this many days (1 to 365)")] = 30,
) -> None:
    """Create a member token for the portal; printed once, alone on the last line."""
    from setia.service.member_tokens import issue

    try:
        issued = issue(engine(), program, member, days=days)
    except SetiaError as exc:
        fail(_explain(exc))
    errors.print(f"member token for {member}, valid until {issued['expires_at']}:")
    sys.stdout.write(f"{issued['token']}\n")


def db_partitions(
    months_ahead: Annotated[int, typer.Option(
        help="months after this month (or --from, if later) to make")] = 12,
    since: Annotated[str | None, typer.Option("--from", help="first month, YYYY-MM "
                                                              "(default this month)")] = None,
) -> None:
    """Create the monthly partitions of postings and events (PostgreSQL); rows already
    in the DEFAULT partition for a new month move into it."""
    from setia.adapters.db import partitions

    today = datetime.now(UTC).date().replace(day=1)
    try:
        first = date.fromisoformat(f"{since}-01") if since else today
    except ValueError:
        fail("--from must be a month such as 2027-03")
    if not 0 <= months_ahead <= 120:
        fail("--months-ahead must be from 0 to 120")
    built = engine()
    if built.dialect.name != "postgresql":
        console.print("SQLite tables are not partitioned: nothing to do")
        return
    with built.begin() as conn:
        report = partitions.ensure_months(conn, first,
                                          partitions.add_months(max(first, today), months_ahead))
    console.print(f"{len(report.created)} partition(s) created, "
                  f"{report.moved_rows} row(s) moved from DEFAULT")
    for name in report.created:
        console.print(f"  {name}")


def register(app: typer.Typer) -> None:
    app.add_typer(privacy_app, name="privacy")
    app.add_typer(fraud_app, name="fraud")
    app.command("audit")(audit_list)
    for group in app.registered_groups:
        if group.name == "member" and group.typer_instance is not None:
            group.typer_instance.command("token")(member_token)
        if group.name == "db" and group.typer_instance is not None:
            group.typer_instance.command("partitions")(db_partitions)
