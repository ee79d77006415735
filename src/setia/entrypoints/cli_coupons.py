"""``setia coupons``: generate a batch of unique codes (with a progress bar) and export it."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Annotated

import typer

from setia.domain.errors import SetiaError
from setia.entrypoints.cli import _explain, console, engine, fail, os_reason, progress_bar

app: typer.Typer = typer.Typer(help="Coupons: batches of unique codes.", no_args_is_help=True)


def _write(path: Path, chunks: object) -> int:
    lines = 0
    try:
        with path.open("w", encoding="utf-8", newline="") as out:
            for chunk in chunks:  # type: ignore[attr-defined]
                out.write(chunk)
                lines += chunk.count("\n")
    except OSError as exc:
        fail(f"cannot write {path}: {os_reason(exc)}")
    return lines - 1  # the header


@app.command("generate")
def generate(
    coupon: Annotated[str, typer.Argument(help="a coupon of the programme without a public code")],
    program: Annotated[str, typer.Option("--program", "-p", help="programme id")],
    count: Annotated[int, typer.Option(min=1, max=1_000_000, help="codes to make")],
    out: Annotated[Path, typer.Option(help="write the codes here as CSV")],
    prefix: Annotated[str, typer.Option(help="up to 12 characters before each code")] = "",
    key: Annotated[str | None, typer.Option(help="idempotency key (default: a new one)")] = None,
) -> None:
    """Make COUNT new unique one-use codes for COUPON and write them to a CSV file."""
    from setia.service.coupons import export_batch, generate_batch

    built = engine()
    # The file is opened (made or emptied) before any code is: a batch made and then
    # not written would be stored with no way to see its codes but an export.
    existed = out.exists()
    try:
        out.open("a", encoding="utf-8").close()
    except OSError as exc:
        fail(f"cannot write {out}: {os_reason(exc)}")
    try:
        with progress_bar() as bar:
            task = bar.add_task(f"generating {coupon} codes", total=count)
            batch = generate_batch(built, program, coupon, {"count": count, "prefix": prefix},
                                   key or f"cli-{uuid.uuid4()}",
                                   progress=lambda made: bar.update(task, completed=made))
    except SetiaError as exc:
        if not existed:
            out.unlink(missing_ok=True)
        fail(_explain(exc))
    try:
        written = _write(out, export_batch(built, program, batch["id"]))
    except SetiaError as exc:
        fail(_explain(exc))
    console.print(f"batch {batch['id']}: {written} codes of coupon {coupon} written to {out}")


@app.command("export")
def export(
    batch: Annotated[str, typer.Argument(help="batch id (cpb_...)")],
    program: Annotated[str, typer.Option("--program", "-p", help="programme id")],
    out: Annotated[Path, typer.Option(help="write the codes here as CSV")],
) -> None:
    """Write a batch's codes and whether each was used to a CSV file."""
    from setia.service.coupons import export_batch

    try:
        written = _write(out, export_batch(engine(), program, batch))
    except SetiaError as exc:
        fail(_explain(exc))
    console.print(f"{written} codes of batch {batch} written to {out}")
