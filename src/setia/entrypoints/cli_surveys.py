"""``setia surveys results`` and ``setia donations totals``: the operator's figures."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.table import Table

from setia.domain.errors import SetiaError
from setia.entrypoints.cli import _explain, console, engine, fail

surveys_app: typer.Typer = typer.Typer(help="Surveys: NPS and satisfaction.", no_args_is_help=True)
donations_app: typer.Typer = typer.Typer(help="Donations: totals per cause.", no_args_is_help=True)


@surveys_app.command("results")
def results(
    survey: Annotated[str, typer.Argument(help="survey id")],
    program: Annotated[str, typer.Option("--program", "-p", help="programme id")],
    per: Annotated[str, typer.Option(help="day, week, month or year")] = "month",
    as_json: Annotated[bool, typer.Option("--json", help="print the API's object")] = False,
) -> None:
    """Responses, NPS and satisfaction of a survey per period."""
    from setia.service.surveys import results as survey_results

    try:
        found = survey_results(engine(), program, survey, per)
    except SetiaError as exc:
        fail(_explain(exc))
    if as_json:
        sys.stdout.write(json.dumps(found, indent=2) + "\n")
        return
    table = Table(title=f"survey {survey} per {per}")
    columns = ("period", "responses", "promoters", "passives", "detractors", "nps",
               "average_rating", "satisfaction")
    for column in columns:
        table.add_column(column.replace("_", " "), justify="right")
    for period in found["periods"]:
        table.add_row(*(str(period[c]) if period[c] is not None else "-" for c in columns))
    console.print(table)


@donations_app.command("totals")
def totals(
    program: Annotated[str, typer.Option("--program", "-p", help="programme id")],
) -> None:
    """Donations, donors, points and their value per cause."""
    from setia.service.donations import totals as cause_totals

    try:
        found = cause_totals(engine(), program)
    except SetiaError as exc:
        fail(_explain(exc))
    table = Table(title=f"donations in {program}")
    for column in ("cause", "name", "donations", "donors", "points", "amount"):
        table.add_column(column, justify="right" if column in ("donations", "donors", "points",
                                                                "amount") else "left")
    for cause in found["causes"]:
        name = f"{cause['name']} (retired)" if cause.get("retired") else cause["name"]
        table.add_row(cause["cause"], name, str(cause["donations"]),
                      str(cause["donors"]), str(cause["points"]),
                      f"{cause['currency']} {cause['amount']}")
    console.print(table)
