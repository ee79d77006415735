"""The HTML report: one self-contained file (inline CSS and SVG charts drawn by
matplotlib; no script, no fetch), so it can be mailed or archived as it is."""

from __future__ import annotations

import html
import io
from datetime import datetime
from typing import Any

import polars as pl

from setia.service import analytics as an

CSS = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:70rem;color:#1d2433}
h1{margin-bottom:0}h2{margin-top:2.5rem;border-bottom:1px solid #d0d5dd}
table{border-collapse:collapse;margin:.5rem 0;font-size:.85rem}
th,td{border:1px solid #d0d5dd;padding:.25rem .5rem;text-align:right}
th{background:#f2f4f7}td:first-child,th:first-child{text-align:left}
.muted{color:#667085}figure{margin:1rem 0}
"""


def _svg(draw: Any) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 3))
    try:
        draw(axes)
        axes.grid(axis="y", alpha=0.3)
        figure.tight_layout()
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg")
    finally:
        plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def _table(frame: pl.DataFrame | None, digits: int, limit: int = 60) -> str:
    if frame is None:
        return '<p class="muted">No data: the table this metric reads does not exist.</p>'
    if frame.height == 0:
        return '<p class="muted">Nothing in this range.</p>'
    shown = an.for_display(frame, digits).head(limit)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in shown.columns)
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape('' if v is None else str(v))}</td>" for v in row)
        + "</tr>"
        for row in shown.iter_rows()
    )
    more = (f'<p class="muted">First {limit} of {frame.height} rows.</p>'
            if frame.height > limit else "")
    return f"<table><tr>{head}</tr>{rows}</table>{more}"


def _labels(frame: pl.DataFrame) -> list[str]:
    return [str(v) for v in frame["period"].to_list()]


def charts(results: dict[str, pl.DataFrame | None]) -> dict[str, str]:
    out: dict[str, str] = {}
    sales = results.get("sales")
    # one bar pair per period: a breakdown (by store, channel, partner or tier) has
    # several rows per period and gets its table only
    if sales is not None and sales.height and not set(an.DIMENSIONS) & set(sales.columns):
        def draw_sales(ax: Any) -> None:
            labels = _labels(sales)
            x = range(len(labels))
            ax.bar([i - 0.2 for i in x], (sales["member_sales_e4"] / an.E4).to_list(), 0.4,
                   label="members")
            ax.bar([i + 0.2 for i in x], (sales["guest_sales_e4"] / an.E4).to_list(), 0.4,
                   label="non-members")
            ax.set_xticks(list(x), labels, rotation=45, ha="right", fontsize=7)
            ax.set_title("Sales")
            ax.legend()
        out["sales"] = _svg(draw_sales)
    points = results.get("points")
    if points is not None and points.height and points.columns[1] == "outstanding":
        def draw_points(ax: Any) -> None:
            labels = _labels(points)
            for column in ("issued", "redeemed", "expired"):
                ax.plot(labels, points[column].to_list(), marker="o", label=column)
            ax.plot(labels, points["outstanding"].to_list(), linestyle="--", label="outstanding")
            ax.tick_params(axis="x", rotation=45, labelsize=7)
            ax.set_title("Points")
            ax.legend()
        out["points"] = _svg(draw_points)
    churn = results.get("churn")
    if churn is not None and churn.height and "churn_rate" in churn.columns \
            and churn.columns[2] == "customers":
        def draw_churn(ax: Any) -> None:
            ax.plot(_labels(churn), churn["churn_rate"].fill_null(0).to_list(), marker="o")
            ax.tick_params(axis="x", rotation=45, labelsize=7)
            ax.set_title("Churn rate")
        out["churn"] = _svg(draw_churn)
    rfm = results.get("rfm")
    if rfm is not None and rfm.height:
        def draw_rfm(ax: Any) -> None:
            ax.bar(rfm["segment"].to_list(), rfm["members"].to_list())
            ax.set_title("RFM segments")
        out["rfm"] = _svg(draw_rfm)
    return out


def render(program: str, options: an.Options, results: dict[str, pl.DataFrame | None],
           digits: int, clv: dict[str, Any] | None = None) -> str:
    drawn = charts(results)
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Setia report: {html.escape(program)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(program)}</h1>",
        f"<p class='muted'>{options.date_from} to {options.date_to}, by {options.grain}"
        f"{', per ' + options.by if options.by else ''}; churn after {options.churn_days} days; "
        f"cost per point {options.cost_per_point}. Made {datetime.now():%Y-%m-%d %H:%M}.</p>",
    ]
    for name, frame in results.items():
        parts.append(f"<h2>{html.escape(name)}</h2>")
        if name in drawn:
            parts.append(f"<figure>{drawn[name]}</figure>")
        parts.append(_table(frame, digits))
    if clv is not None:
        parts.append("<h2>customer lifetime value</h2>")
        parts.append(f"<p>{html.escape(str(clv))}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
