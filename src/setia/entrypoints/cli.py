"""The ``setia`` command line (CONTRACT.md section 3). Thin: parse, call a service, print.

Every command exits non-zero with a one-line reason on error.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, NoReturn

import sqlalchemy as sa
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from typer._click import exceptions as click_errors  # typer's own click (pinned typer)

from setia.adapters.db.engine import database_url, make_engine
from setia.adapters.db.migrate import upgrade
from setia.domain.errors import InvalidProgramme, SetiaError
from setia.domain.events import parse_time
from setia.entrypoints import cli_ops

app = typer.Typer(
    help="Setia: a loyalty and rewards engine.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
program_app = typer.Typer(help="Programme files.", no_args_is_help=True)
import_app = typer.Typer(help="Bulk import.", no_args_is_help=True)
member_app = typer.Typer(help="Members.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(program_app, name="program")
app.add_typer(import_app, name="import")
app.add_typer(member_app, name="member")
app.add_typer(cli_ops.webhooks_app, name="webhooks")
app.command("worker")(cli_ops.worker_command)

console = Console()
errors = Console(stderr=True)


def fail(reason: str, code: int = 1) -> NoReturn:
    errors.print(f"error: {reason}", markup=False, soft_wrap=True)
    raise typer.Exit(code)


def progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeRemainingColumn(),
        console=errors,
        transient=False,
    )


def engine(migrate: bool = True) -> sa.Engine:
    """The database's engine, migrated first (``migrate``); a database that cannot be
    reached ends the command with a one-line reason."""
    url = database_url()
    try:
        built = make_engine(url)
    except (sa.exc.ArgumentError, ImportError) as exc:
        # a URL SQLAlchemy cannot read, or a database whose driver Setia does not ship
        reason = " ".join(str(exc).split()) or type(exc).__name__
        fail(f"SETIA_DATABASE_URL is not a database Setia can use (sqlite:/// or "
             f"postgresql+psycopg://): {reason}")
    try:
        if migrate:
            upgrade(built)
        else:
            with built.connect():
                pass
    except sa.exc.DBAPIError as exc:
        where = built.url.render_as_string(hide_password=True)
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
        fail(f"cannot use the database {where}: {reason}")
    return built


def os_reason(exc: OSError) -> str:
    """Why a file could not be read or written, in words (some libraries raise an OSError
    without ``strerror``)."""
    return exc.strerror or str(exc)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        fail(f"cannot read {path}: {os_reason(exc)}")
    except UnicodeDecodeError as exc:
        fail(f"cannot read {path}: it is not UTF-8 text (byte {exc.start + 1})")


def _explain(exc: SetiaError) -> str:
    if isinstance(exc, InvalidProgramme):
        return exc.detail
    return f"{exc.detail}" + (f" (field {exc.field})" if exc.field else "")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply the Alembic migrations to SETIA_DATABASE_URL."""
    engine(migrate=True)
    console.print("database is up to date")


@program_app.command("validate")
def program_validate(file: Annotated[Path, typer.Argument(help="programme YAML or JSON")]) -> None:
    """Check a programme file; print every error with its path."""
    from setia.service.programmes import validate_text

    try:
        model = validate_text(_read(file))
    except InvalidProgramme as exc:
        for path, reason in exc.errors:
            errors.print(f"{file}: {path}: {reason}", markup=False, soft_wrap=True)
        fail(f"{file} has {len(exc.errors)} error(s)")
    console.print(
        f"{file}: programme {model.id} is valid ({len(model.earn)} rules, "
        f"{len(model.tiers.levels)} tiers, {len(model.rewards)} rewards)"
    )


@program_app.command("load")
def program_load(file: Annotated[Path, typer.Argument(help="programme YAML or JSON")]) -> None:
    """Store a programme; a new version if it changed."""
    from setia.service.programmes import parse_text, store_programme

    try:
        stored = store_programme(engine(), parse_text(_read(file)))
    except InvalidProgramme as exc:
        for path, reason in exc.errors:
            errors.print(f"{file}: {path}: {reason}", markup=False, soft_wrap=True)
        fail(f"{file} has {len(exc.errors)} error(s)")
    except SetiaError as exc:
        fail(_explain(exc))
    state = "stored as version" if stored["created"] else "unchanged, still version"
    console.print(f"programme {stored['id']} {state} {stored['version']}")


@import_app.command("events")
def import_events_command(
    file: Annotated[Path, typer.Argument(help="JSON Lines (.jsonl) or CSV (.csv) events")],
    program: Annotated[str, typer.Option("--program", "-p", help="programme id")],
    report: Annotated[
        Path | None, typer.Option(help="write rejected rows here (JSON Lines)")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=5000)] = 1000,
) -> None:
    """Bulk load events, idempotent by event id; bad rows go to a report, the rest load."""
    from setia.service.importer import count_rows, import_events

    if not file.exists():
        fail(f"no such file: {file}")
    if not file.is_file():
        fail(f"not a file: {file}")
    if report is not None and not report.parent.is_dir():
        fail(f"cannot write {report}: no such directory {report.parent}")
    try:
        with progress_bar() as bar:
            task = bar.add_task(f"importing {file.name}", total=count_rows(file))
            summary = import_events(
                engine(),
                program,
                file,
                batch_size=batch_size,
                report_path=report,
                progress=lambda n: bar.advance(task, n),
            )
    except SetiaError as exc:
        fail(_explain(exc))
    except OSError as exc:
        fail(f"cannot read or write {exc.filename or file}: {os_reason(exc)}")
    table = Table(title=f"import of {file.name}")
    for key in ("rows", "applied", "replayed", "rejected", "seconds", "events_per_second"):
        table.add_column(key, justify="right")
    table.add_row(
        *(
            str(summary[k])
            for k in ("rows", "applied", "replayed", "rejected", "seconds", "events_per_second")
        )
    )
    console.print(table)
    if summary["rejected"]:
        errors.print(f"{summary['rejected']} row(s) rejected; see {summary['report']}")


@member_app.command("show")
def member_show(
    member: Annotated[str, typer.Argument(help="member id")],
    program: Annotated[str, typer.Option("--program", "-p", help="programme id")],
    as_json: Annotated[bool, typer.Option("--json", help="print the API's member object")] = False,
) -> None:
    """Profile, tier, balances and tier progress of one member."""
    from setia.service.members import get_member

    try:
        view = get_member(engine(), program, member)
    except SetiaError as exc:
        fail(_explain(exc))
    if as_json:
        sys.stdout.write(json.dumps(view, indent=2, ensure_ascii=False) + "\n")
        return
    table = Table(title=f"member {view['id']}", show_header=False)
    table.add_row("name", str(view["name"] or ""))
    table.add_row("tier", f"{view['tier']['name']} (× {view['tier']['multiplier']})")
    nxt = view["tier"]["next"]
    if nxt:
        table.add_row("next tier", f"{nxt['id']}: {nxt['remaining']} more {nxt['metric']}")
    for key, value in view["balances"].items():
        table.add_row(key, str(value))
    for item in view["expiring"]:
        table.add_row("expiring", f"{item['points']} on {item['expires_at']}")
    console.print(table)


def _as_of(value: str | None) -> datetime:
    if value is None:
        return datetime.now(UTC)
    try:
        return parse_time(value, "--as-of")
    except SetiaError as exc:
        fail(exc.detail)


@app.command("run-due")
def run_due_command(
    as_of: Annotated[str | None, typer.Option("--as-of", help="ISO 8601 time with offset")] = None,
    program: Annotated[str | None, typer.Option("--program", "-p")] = None,
) -> None:
    """Expiry, pending activation, tier reviews, birthdays and timed-out holds; idempotent."""
    from setia.service.run_due import run_due

    moment = _as_of(as_of)
    try:
        report = run_due(engine(), moment, program)
    except SetiaError as exc:
        fail(_explain(exc))
    table = Table(title=f"run-due as of {moment.isoformat()}")
    table.add_column("what")
    table.add_column("count", justify="right")
    for key, value in report.as_dict().items():
        if key != "programmes":
            table.add_row(key.replace("_", " "), str(value))
    console.print(table)


@app.command("check")
def check_command() -> None:
    """Verify the journal: zero sum per asset, cached balances, lots; exit 1 on a mismatch."""
    from setia.service.check import check

    report = check(engine())
    for problem in report.problems:
        errors.print(problem, markup=False)
    if not report.ok:
        fail(f"{len(report.problems)} problem(s) in the journal")
    console.print(
        f"journal ok: {report.postings} postings, {report.members} members, "
        f"every asset sums to zero"
    )


@app.command("demo")
def demo_command(
    members: Annotated[int, typer.Option(min=1, help="members to simulate")] = 320,
    purchases: Annotated[int, typer.Option(min=1, help="purchases to simulate")] = 10_500,
    seed: Annotated[int, typer.Option(help="random seed")] = 7,
    serve: Annotated[
        bool, typer.Option("--serve/--no-serve", help="serve the API afterwards (when available)")
    ] = True,
) -> None:
    """Build the Kopi Setia demo: a simulated year of a café, then a summary."""
    from setia.entrypoints.demo import run_demo

    try:
        run_demo(engine(), console, members=members, purchases=purchases, seed=seed)
    except SetiaError as exc:
        fail(_explain(exc))
    if serve:
        _serve_demo("127.0.0.1", 8000)  # the API and the web pages


def _serve_demo(host: str, port: int) -> None:
    import os

    from setia.entrypoints.server import serve as run_server

    built = engine()
    if os.environ.get("SETIA_ADMIN_KEY"):
        console.print("Use the key in SETIA_ADMIN_KEY as 'Authorization: Bearer ...'.")
    else:
        from setia.service.keys import create_key

        console.print("An admin key for this demo (shown once):")
        console.print(create_key(built, "admin"), markup=False, highlight=False)
    console.print(f"Serving on http://{host}:{port} (API docs at /docs); Ctrl-C stops.")
    run_server(built, host, port, scheduler=False)


@app.command("serve")
def serve_command(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    scheduler: Annotated[bool, typer.Option("--scheduler/--no-scheduler",
                                            help="run due work every minute")] = True,
    workers: Annotated[int, typer.Option(min=1, max=32, help="API processes")] = 1,
) -> None:
    """Migrate the database, then serve the HTTP API (and run-due every minute)."""
    from setia.entrypoints.api.live import thread_count
    from setia.entrypoints.server import serve as run_server

    try:
        thread_count()  # SETIA_API_THREADS, checked before anything starts
    except ValueError as exc:
        fail(str(exc))
    run_server(engine(), host, port, scheduler=scheduler, workers=workers)


from setia.entrypoints.cli_users import users_app  # noqa: E402 - staff accounts (web pages)

app.add_typer(users_app, name="users")
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def keys_create(
    scope: Annotated[str, typer.Option(help="admin, pos or member-read")],
    program: Annotated[str | None, typer.Option("--program", "-p",
                                                help="limit the key to one programme")] = None,
) -> None:
    """Create an API key; it is printed once, alone on the last line."""
    from setia.service.keys import create_key

    try:
        key = create_key(engine(), scope, program)
    except SetiaError as exc:
        fail(_explain(exc))
    errors.print(f"{scope} key created; store it now, it is not shown again:")
    sys.stdout.write(key + "\n")


from setia.entrypoints import cli_analytics  # noqa: E402  (report, whatif, analytics ...)

cli_analytics.register(app)
# Referrals, coupons, surveys and donations: sub-apps in their own modules.
from setia.entrypoints import cli_coupons, cli_referrals, cli_surveys  # noqa: E402

app.add_typer(cli_coupons.app, name="coupons")
app.add_typer(cli_referrals.app, name="referrals")
app.add_typer(cli_surveys.surveys_app, name="surveys")
app.add_typer(cli_surveys.donations_app, name="donations")


def main() -> NoReturn:
    """The ``setia`` console script: the app, with a usage error (a missing option, a
    value out of range, an unknown command) told on one line, as every other error is,
    instead of click's usage and a box; exit status 2 for those, as click gives."""
    try:
        status = app(standalone_mode=False)
    except click_errors.NoArgsIsHelpError as exc:  # a group without its command: its
        sys.exit(exc.exit_code)                      # help, printed already
    except click_errors.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx is not None else "setia"
        fail_line(f"{exc.format_message()} (see {command} --help)", exc.exit_code)
    except click_errors.ClickException as exc:
        fail_line(exc.format_message(), exc.exit_code)
    except typer.Abort:  # end of input at a prompt (Ctrl-C ends with status 130 itself)
        fail_line("aborted: no answer to the prompt", 1)
    sys.exit(status if isinstance(status, int) else 0)


def fail_line(reason: str, code: int) -> NoReturn:
    """``fail`` outside a command (no typer.Exit to raise)."""
    errors.print(f"error: {' '.join(reason.split())}", markup=False, soft_wrap=True)
    sys.exit(code)


from setia.entrypoints.cli_engagement import campaigns_app, membership_app  # noqa: E402

app.add_typer(campaigns_app, name="campaigns")
app.add_typer(membership_app, name="membership")
from setia.entrypoints.cli_store_credit import credit_app, settlement_command  # noqa: E402

app.add_typer(credit_app, name="credit")
app.command("settlement")(settlement_command)
# Operations and trust: privacy, fraud, audit, member token, db partitions.
from setia.entrypoints import cli_trust  # noqa: E402

cli_trust.register(app)
