"""``setia worker`` and ``setia webhooks ...`` (endpoints, dead letters, replay)."""

from __future__ import annotations

import json
import signal
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from setia.domain.errors import SetiaError

webhooks_app = typer.Typer(help="Webhook endpoints and the dead-letter list.",
                           no_args_is_help=True)


def _cli() -> Any:
    from setia.entrypoints import cli

    return cli


def _print_json(read: Any, program: str) -> None:
    """What ``read(engine, program)`` answers, as indented JSON; a refusal in one line."""
    try:
        print(json.dumps(read(_cli().engine(), program), indent=2))
    except SetiaError as exc:
        _cli().fail(_cli()._explain(exc))


def worker_command(
    once: Annotated[bool, typer.Option("--once", help="one pass, then exit")] = False,
    run_due_every: Annotated[float, typer.Option(
        help="seconds between run-due passes (0: never)")] = 60.0,
    webhook_timeout: Annotated[float, typer.Option(
        min=0.1, max=120, help="seconds a webhook send may take in all (0.1 to 120)")] = 10.0,
    webhook_concurrency: Annotated[int, typer.Option(
        min=1, max=64, help="webhooks sent at once (each batch claimed is sent in parallel)"
    )] = 8,
) -> None:
    """Run due work and deliver webhooks and emails until stopped (SIGTERM or Ctrl-C).

    SMTP comes from SETIA_SMTP_HOST, SETIA_SMTP_PORT and SETIA_SMTP_FROM; without them
    emails wait in the queue."""
    from setia.adapters.mail import settings_from_env
    from setia.entrypoints.observability import configure_logging
    from setia.entrypoints.worker import Worker

    configure_logging()
    worker = Worker(_cli().engine(), smtp=settings_from_env(), run_due_seconds=run_due_every,
                    webhook_timeout=webhook_timeout, webhook_concurrency=webhook_concurrency)
    try:
        if once:
            report = worker.run_once()
            print(json.dumps({"dispatched": report.dispatched, "delivered": report.delivered,
                              "failed": report.failed, "dead": report.dead,
                              "dropped": report.dropped, "released": report.released}))
            return
        signal.signal(signal.SIGTERM, lambda *_: worker.stopped.set())
        try:
            worker.run()
        except KeyboardInterrupt:
            worker.stopped.set()
    finally:
        worker.close()


@webhooks_app.command("add")
def webhooks_add(
    url: Annotated[str, typer.Argument(help="where to POST, http:// or https://")],
    program: Annotated[str, typer.Option(help="programme id")],
    type_: Annotated[list[str] | None, typer.Option(
        "--type", help="only these message types (repeat); default every type")] = None,
) -> None:
    """Register an endpoint; prints its id, then its signing secret alone on the last line."""
    from setia.service.deliveries import add_endpoint

    try:
        found = add_endpoint(_cli().engine(), program, url, type_ or None, datetime.now(UTC))
    except SetiaError as exc:
        _cli().fail(_cli()._explain(exc))
    print(found["id"])
    print(found["secret"])


@webhooks_app.command("list")
def webhooks_list(program: Annotated[str, typer.Option(help="programme id")]) -> None:
    """Active endpoints of a programme (without their secrets)."""
    from setia.service.deliveries import list_endpoints

    _print_json(list_endpoints, program)


@webhooks_app.command("remove")
def webhooks_remove(
    webhook: Annotated[str, typer.Argument(help="the endpoint's id (we_...)")],
    program: Annotated[str, typer.Option(help="programme id")],
) -> None:
    """Stop an endpoint: nothing more is sent to it (deliveries waiting for it are dropped)."""
    from setia.service.deliveries import remove_endpoint

    try:
        remove_endpoint(_cli().engine(), program, webhook, datetime.now(UTC))
    except SetiaError as exc:
        _cli().fail(_cli()._explain(exc))
    print(f"removed {webhook}")


@webhooks_app.command("dead")
def webhooks_dead(program: Annotated[str, typer.Option(help="programme id")]) -> None:
    """Deliveries that failed for 24 hours (webhooks and emails), as JSON."""
    from setia.service.deliveries import dead_letters

    _print_json(dead_letters, program)


@webhooks_app.command("replay")
def webhooks_replay(
    program: Annotated[str, typer.Option(help="programme id")],
    id_: Annotated[list[int] | None, typer.Option("--id", help="only these (repeat)")] = None,
) -> None:
    """Queue dead deliveries again (all of the programme's, or --id ones)."""
    from setia.service.deliveries import replay

    try:
        result = replay(_cli().engine(), program, id_ or None, datetime.now(UTC))
    except SetiaError as exc:
        _cli().fail(_cli()._explain(exc))
    print(f"replayed {result['replayed']}")
