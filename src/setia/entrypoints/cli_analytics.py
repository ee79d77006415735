"""``setia report``, ``setia whatif`` and ``setia analytics ...`` (docs/analytics.md)."""

from __future__ import annotations

import json
from datetime import date
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

if TYPE_CHECKING:  # Polars is imported when a command runs, not for every ``setia`` call
    import polars as pl

analytics_app = typer.Typer(help="Analytics: exports, member reports, audit, CLV.",
                            no_args_is_help=True)

Program = Annotated[str, typer.Option("--program", "-p", help="programme id")]
From = Annotated[str, typer.Option("--from", help="first local day, YYYY-MM-DD")]
To = Annotated[str, typer.Option("--to", help="last local day (included), YYYY-MM-DD")]
SUMMARY = ("sales", "enrolments", "retention", "points", "churn", "liability-ageing", "rfm",
           "campaigns", "coupons", "surveys", "memberships")


def _cli() -> Any:
    from setia.entrypoints import cli

    return cli


def _date(text: str, option: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        pass
    _cli().fail(f"{option} must be a date YYYY-MM-DD, not {text!r}")
    raise AssertionError  # fail() exits


def _decimal(text: str | None, option: str) -> Decimal | None:
    if text is None:
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:
        pass
    else:
        if value.is_finite():
            return value
    _cli().fail(f"{option} must be a decimal number, not {text!r}")
    raise AssertionError  # fail() exits


def _print_frame(title: str, frame: pl.DataFrame | None, digits: int, limit: int = 40) -> None:
    import polars as pl

    from setia.service.analytics import for_display

    cli = _cli()
    if frame is None:
        cli.console.print(f"[bold]{title}[/]: no data (its table does not exist)")
        return
    shown = for_display(frame, digits)
    table = Table(title=title, title_justify="left")
    for column in shown.columns:
        table.add_column(column, justify="left" if shown.schema[column] == pl.String else "right")
    for row in shown.head(limit).iter_rows():
        table.add_row(*("" if v is None else str(v) for v in row))
    cli.console.print(table)
    if shown.height > limit:
        cli.console.print(f"({shown.height - limit} more rows)")


def report(
    program: Program, date_from: From, date_to: To,
    grain: Annotated[str, typer.Option(help="day, week, month or total")] = "month",
    by: Annotated[str | None, typer.Option(help="tier, store, channel or partner")] = None,
    churn_days: Annotated[int | None, typer.Option(help="no purchase in N days = churned")]
    = None,
    cost_per_point: Annotated[str | None, typer.Option(help="money per point (liability)")]
    = None,
    html: Annotated[Path | None, typer.Option("--html", help="also write this HTML file")]
    = None,
) -> None:
    """Programme metrics for a date range as terminal tables (and an HTML report)."""
    from setia.domain.errors import SetiaError
    from setia.service import analytics as an

    cli = _cli()
    engine = cli.engine()
    start, end = _date(date_from, "--from"), _date(date_to, "--to")
    try:
        programme = an.programme_of(engine, program)
        options = an.options_for(programme, start, end, grain=grain, by=by,
                                 churn_days=churn_days,
                                 cost_per_point=_decimal(cost_per_point, "--cost-per-point"))
        with cli.progress_bar() as bar:
            task = bar.add_task("computing metrics", total=len(an.METRICS) + 1)
            data = an.load(engine, program, by=options.by, summary=True)
            bar.advance(task)
            results = {}
            for name, metric in an.METRICS.items():
                results[name] = metric(data, options)
                bar.advance(task)
    except SetiaError as exc:
        cli.fail(cli._explain(exc))
    digits = an._digits(programme)
    for name in SUMMARY:
        _print_frame(name, results.get(name), digits)
    if html is not None:
        from setia.entrypoints.report_html import render

        try:
            html.write_text(render(program, options, results, digits), encoding="utf-8")
        except OSError as exc:
            cli.fail(f"cannot write {html}: {cli.os_reason(exc)}")
        cli.console.print(f"HTML report written to {html}")


def whatif(
    program: Program, draft: Annotated[Path, typer.Option(help="draft programme YAML or JSON")],
    date_from: From, date_to: To,
    as_json: Annotated[bool, typer.Option("--json", help="print the comparison as JSON")]
    = False,
    workers: Annotated[int, typer.Option(
        min=1, max=8, help="processes the members are split over (the answer is the same)"
    )] = 1,
) -> None:
    """Replay a period's real events through a draft programme; compare; write nothing."""
    from setia.domain.errors import SetiaError
    from setia.service import whatif as service
    from setia.service.programmes import parse_text

    cli = _cli()
    start, end = _date(date_from, "--from"), _date(date_to, "--to")
    try:
        document = parse_text(cli._read(draft))
        with cli.progress_bar() as bar:
            task = bar.add_task("what-if", total=4)

            def step(text: str) -> None:
                bar.update(task, description=text)
                bar.advance(task)

            result = service.run(cli.engine(), program, document, start, end, step, workers)
    except SetiaError as exc:
        cli.fail(cli._explain(exc))
    if as_json:
        cli.console.print_json(json.dumps(result))
        return
    table = Table(title=f"what-if {program} {start} to {end}: {result['events']:,} events, "
                  f"{result['members']:,} members", title_justify="left")
    table.add_column("")
    table.add_column("live", justify="right")
    table.add_column("draft", justify="right")
    live, new = result["live"], result["draft"]
    table.add_row("points issued", f"{live['points_issued']:,}", f"{new['points_issued']:,}")
    table.add_row("liability", live["liability"], new["liability"])
    table.add_row("cost (after breakage)", live["cost"], new["cost"])
    for tier in sorted(set(live["tier_distribution"]) | set(new["tier_distribution"])):
        table.add_row(f"members in {tier}", str(live["tier_distribution"].get(tier, 0)),
                      str(new["tier_distribution"].get(tier, 0)))
    for reward in sorted(set(live["rewards_affordable"]) | set(new["rewards_affordable"])):
        table.add_row(f"can afford {reward}", str(live["rewards_affordable"].get(reward, "-")),
                      str(new["rewards_affordable"].get(reward, "-")))
    cli.console.print(table)
    cli.console.print(f"members affected: {result['members_affected']:,}; changing tier: "
                      f"{result['members_changing_tier']:,}; live points as posted: "
                      f"{result['posted_points']:,}")


@analytics_app.command("export")
def export_command(
    dataset: Annotated[str, typer.Argument(help="members, journal or metrics")],
    file: Annotated[Path, typer.Argument(help="where to write")],
    program: Program, date_from: From, date_to: To,
    format: Annotated[str | None, typer.Option(help="csv, parquet or json (default: from "
                                                     "the file name)")] = None,
    metric: Annotated[str, typer.Option(help="for metrics: which one")] = "sales",
    grain: Annotated[str, typer.Option(help="for metrics: day, week, month or total")]
    = "month",
    by: Annotated[str | None, typer.Option(help="for metrics: a dimension")] = None,
) -> None:
    """Members (with CLV and RFM), the journal, or one metric, as CSV, Parquet or JSON."""
    from setia.domain.errors import SetiaError
    from setia.service import analytics_reports as reports

    cli = _cli()
    fmt = format or file.suffix.lstrip(".").lower()
    try:
        frame, digits = reports.export(cli.engine(), program, dataset, _date(date_from, "--from"),
                                       _date(date_to, "--to"), metric, grain=grain, by=by)
        reports.write(frame, fmt, digits, file)
    except SetiaError as exc:
        cli.fail(cli._explain(exc))
    except OSError as exc:
        cli.fail(f"cannot write {file}: {cli.os_reason(exc)}")
    cli.console.print(f"{frame.height:,} rows written to {file}")


@analytics_app.command("member-reports")
def member_reports_command(
    file: Annotated[Path, typer.Argument(help="where to write (.csv or .json)")],
    program: Program, date_from: From, date_to: To,
    member: Annotated[str | None, typer.Option(help="only this member")] = None,
) -> None:
    """Per member for the period: points earned, spent, expired, balances, tier progress."""
    from setia.domain.errors import SetiaError
    from setia.service import analytics as an
    from setia.service import analytics_reports as reports

    cli = _cli()
    fmt = file.suffix.lstrip(".").lower()
    if fmt not in ("csv", "json"):
        cli.fail("the file must end in .csv or .json")
    try:
        data, frame = reports.statements(cli.engine(), program, _date(date_from, "--from"),
                                         _date(date_to, "--to"), member)
        reports.write(frame, fmt, an._digits(data.programme), file)
    except SetiaError as exc:
        cli.fail(cli._explain(exc))
    except OSError as exc:
        cli.fail(f"cannot write {file}: {cli.os_reason(exc)}")
    cli.console.print(f"{frame.height:,} member reports written to {file}")


@analytics_app.command("audit")
def audit_command(
    program: Program, date_from: From, date_to: To,
    grain: Annotated[str, typer.Option(help="day, week, month or total")] = "month",
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Reconcile the journal's totals with the metrics per period; exit 1 on a mismatch."""
    from setia.domain.errors import SetiaError
    from setia.service import analytics_reports as reports

    cli = _cli()
    try:
        result = reports.audit(cli.engine(), program, _date(date_from, "--from"),
                               _date(date_to, "--to"), grain)
    except SetiaError as exc:
        cli.fail(cli._explain(exc))
    if as_json:
        cli.console.print_json(json.dumps(result))
    else:
        table = Table(title=f"audit {program}", title_justify="left")
        for column in ("period", "check", "journal", "metrics", "ok"):
            table.add_column(column)
        for period in result["periods"]:
            for check in period["checks"]:
                table.add_row(period["period"], check["name"], str(check["journal"]),
                              str(check["metrics"]), "ok" if check["ok"] else "MISMATCH")
        for check in result["all_time"]:
            table.add_row("all time", check["name"], str(check["journal"]),
                          str(check["metrics"]), "ok" if check["ok"] else "MISMATCH")
        cli.console.print(table)
    if not result["ok"]:
        cli.fail("the journal and the metrics disagree")


@analytics_app.command("clv")
def clv_command(
    program: Program,
    as_of: Annotated[str, typer.Option("--as-of", help="last local day of history")],
    horizon_weeks: Annotated[int, typer.Option(min=1, max=520)] = 52,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 20,
) -> None:
    """The fitted CLV models and the first members with their predictions."""
    import polars as pl

    from setia.domain.errors import SetiaError
    from setia.service.clv import clv_report

    cli = _cli()
    try:
        result = clv_report(cli.engine(), program, _date(as_of, "--as-of"), horizon_weeks,
                            limit=limit)
    except SetiaError as exc:
        cli.fail(cli._explain(exc))
    cli.console.print_json(json.dumps(result["model"]))
    _print_frame("members", pl.DataFrame(result["members"]) if result["members"] else None, 2)


def register(app: typer.Typer) -> None:
    app.command("report")(report)
    app.command("whatif")(whatif)
    app.add_typer(analytics_app, name="analytics")
