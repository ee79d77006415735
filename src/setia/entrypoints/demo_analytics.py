"""The demo's analytics part: a year's key figures, and where to see more."""

from __future__ import annotations

from datetime import date

import sqlalchemy as sa
from rich.console import Console
from rich.table import Table


def analytics_summary(engine: sa.Engine, console: Console, program_id: str, year: int) -> None:
    from setia.service import analytics as an

    data = an.load(engine, program_id, optional=False)
    options = an.options_for(data.programme, date(year, 1, 1), date(year, 12, 31),
                             grain="total")
    digits = an._digits(data.programme)
    sales = an.records(an.sales(data, options), digits) or [{}]
    points = an.records(an.points(data, options), digits) or [{}]
    churn = an.records(an.churn(data, options), digits) or [{}]
    table = Table(title=f"analytics {year} (setia report --program {program_id} "
                        f"--from {year}-01-01 --to {year}-12-31 --html report.html)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    s, p, c = sales[0], points[0], churn[0]
    for name, value in [
        ("active members", s.get("active_members")),
        ("repeat purchase rate", s.get("repeat_purchase_rate")),
        ("average order (members)", s.get("aov_member")),
        ("points issued", p.get("issued")),
        ("redemption rate", p.get("redemption_rate")),
        ("breakage", p.get("breakage_rate")),
        ("liability at year end", p.get("liability")),
        (f"churned ({options.churn_days} days)", c.get("churn_rate")),
    ]:
        table.add_row(name, "-" if value is None else str(value))
    console.print(table)
