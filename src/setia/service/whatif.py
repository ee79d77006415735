"""What-if: the real history of a period replayed through a draft programme and through
the live one (domain/whatif.py), compared. Reads only: nothing is written."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import polars as pl
import sqlalchemy as sa
from dateutil.relativedelta import relativedelta

from setia.adapters.db.analytics_read import reader
from setia.domain import tiers
from setia.domain.errors import InvalidField
from setia.domain.events import EVENT_KEYS, Event, Line, parse_event
from setia.domain.money import minor_digits
from setia.domain.programme import Programme, compile_programme, validate_document
from setia.domain.whatif import MemberStart, Replay, merge, replay
from setia.service import analytics as an

MAX_DAYS = 93


def compile_draft(document: Any, live: Programme) -> Programme:
    model = validate_document(document)
    if model.id != live.id:
        raise InvalidField(f"the draft's id {model.id!r} is not {live.id!r}", field="id")
    if model.currency != live.currency:
        raise InvalidField(f"the draft's currency {model.currency} is not the programme's "
                           f"{live.currency}", field="currency")
    return compile_programme(model, version=0)


def _utc(day: date, programme: Programme) -> datetime:
    return datetime.combine(day, time(), tzinfo=programme.tz).astimezone(UTC)


def _window_months(programmes: tuple[Programme, ...], date_from: date, date_to: date
                   ) -> list[str]:
    """The months before the period that a tier window of any event in it can reach."""
    first = date_from.strftime("%Y-%m")
    months: set[str] = set()
    cursor = date_from.replace(day=1)
    while cursor <= date_to:
        local = datetime.combine(cursor, time(12))
        for programme in programmes:
            months.update(m for m in tiers.window_months(programme, local) if m < first)
        cursor += relativedelta(months=1)
    return sorted(months)


def _lines(text: str | None, digits: int) -> tuple[Line, ...]:
    if not text or text == "[]":
        return ()
    return tuple(
        Line(sku=line["sku"], category=line.get("category"), quantity=line["quantity"],
             amount=Decimal(line["amount"]))
        for line in json.loads(text)
    )


def _events(frame: pl.DataFrame, currency: str) -> Iterator[Event]:
    """The period's events in time order. Purchases are rebuilt from their order's columns
    (they were checked when they were ingested); other events are parsed again from what
    was stored, leaving out fields this version does not know (added by later features)."""
    digits = minor_digits(currency)
    scale = 10 ** (4 - digits)
    columns = ("id", "type", "member", "occurred_at", "order_id", "amount_e4", "store",
               "channel", "lines", "attributes", "payload")
    for (event_id, kind, member, occurred_at, order_id, amount_e4, store, channel, lines,
         attributes, payload) in frame.select(columns).iter_rows():
        if kind == "purchase":
            yield Event(
                id=event_id, type="purchase", member=member, occurred_at=occurred_at,
                order_id=order_id, amount=Decimal(amount_e4 // scale).scaleb(-digits),
                currency=currency, store=store, channel=channel,
                lines=_lines(lines, digits),
                attributes=json.loads(attributes) if attributes else {},
            )
            continue
        raw = json.loads(payload)
        if not EVENT_KEYS.issuperset(raw):
            raw = {k: v for k, v in raw.items() if k in EVENT_KEYS}
        yield parse_event(raw, currency)


def run(engine: sa.Engine, program_id: str, draft_document: Any, date_from: date,
        date_to: date, progress: Callable[[str], None] | None = None,
        workers: int | None = None) -> dict[str, Any]:
    """Replay [date_from, date_to] (local dates, both included) and compare.

    ``workers``: processes the members are split over for the replay (None: one). The
    answer does not depend on it (tests/integration/test_analytics_fast_paths.py)."""
    an.check_dates(from_=date_from, to=date_to)
    if date_to < date_from:
        raise InvalidField("'to' is before 'from'", field="to")
    if (date_to - date_from).days >= MAX_DAYS:
        raise InvalidField(f"a what-if covers at most {MAX_DAYS} days", field="to")
    live = an.programme_of(engine, program_id)
    draft = compile_draft(draft_document, live)
    start, end = _utc(date_from, live), _utc(date_to + timedelta(days=1), live)
    months = _window_months((live, draft), date_from, date_to)
    step = progress or (lambda _: None)
    step("reading the period's events")

    def read_orders(moment: str | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
        """The period's orders, and each member's purchases before the period."""
        with reader(engine, moment) as read:
            return (read.stored_purchases(program_id, start, end),
                    read.purchase_counts(program_id, start))

    def read_journal(moment: str | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
        """The journal up to the end of the period summed per member, and the earn postings
        of the period: only the comparison needs them."""
        with reader(engine, moment) as read:
            balances = read.postings(
                program_id, columns=("member_pk", "member_delta", "issued", "expired"),
                until=end,
            ).group_by("member_pk").agg(pl.col("member_delta", "issued", "expired").sum())
            earned = read.postings(program_id, columns=("member_pk", "ref", "issued"),
                                   code="earn", since=start, until=end)
        return balances, earned

    # PostgreSQL: three connections at once, all at the first one's moment (it stays open
    # until the others are done), and the journal's sums go on while the replay runs (the
    # replay is Python on one core, the database works on the other)
    pool = ThreadPoolExecutor(2)
    try:
        with reader(engine) as read:
            moment = read.export_snapshot()
            orders_job = None if moment is None else pool.submit(read_orders, moment)
            journal_job = None if moment is None else pool.submit(read_journal, moment)
            others = read.stored_events(program_id, start, end,
                                        excluding=("purchase", "refund"))
            members = read.members(program_id, attributes=True)
            # the tier buckets of the months the period's tier windows reach
            buckets = read.metric_buckets(program_id, months=tuple(months))
            happened, before = read_orders() if orders_job is None else orders_job.result()
            result, ordered = _replay(live, draft, happened, others, members, before,
                                      buckets, step, workers)
            balances, earned = read_journal() if journal_job is None else journal_job.result()
    finally:
        pool.shutdown(wait=True)
    step("comparing")
    posted = (
        earned.join(ordered.select(pl.col("id").alias("ref")), on="ref", how="semi")
        .join(members.select("member_pk", "member"), on="member_pk")
        .group_by("member").agg(pl.col("issued").sum().alias("posted"))
    )
    return _compare(live, draft, result, posted, balances, members, date_to, date_from)


def _replay(live: Programme, draft: Programme, happened: pl.DataFrame, others: pl.DataFrame,
            members: pl.DataFrame, before: pl.DataFrame, buckets: pl.DataFrame,
            step: Callable[[str], None], workers: int | None
            ) -> tuple[Replay, pl.DataFrame]:
    """The members' starts and the events in time order, through domain/whatif.replay."""
    if workers is None:
        workers = 1  # two measured no faster on a shared two-core machine (benchmarks)
    children = _start_children(workers - 1) if workers > 1 else None
    try:
        return _prepare_and_replay(live, draft, happened, others, members, before, buckets,
                                   step, workers, children)
    finally:
        for child in children or []:
            if child.poll() is None:
                child.kill()
                child.wait()


def _prepare_and_replay(live: Programme, draft: Programme, happened: pl.DataFrame,
                        others: pl.DataFrame, members: pl.DataFrame, before: pl.DataFrame,
                        buckets: pl.DataFrame, step: Callable[[str], None], workers: int,
                        children: list[subprocess.Popen[bytes]] | None
                        ) -> tuple[Replay, pl.DataFrame]:
    step("preparing members")
    happened = happened.with_columns(
        pl.col("member_pk").cast(pl.Int64), pl.col("amount_e4").cast(pl.Int64),
        pl.col("payload").str.json_path_match("$.store").alias("store"),
        pl.col("payload").str.json_path_match("$.channel").alias("channel"),
        pl.col("payload").str.json_path_match("$.attributes").alias("attributes"),
        pl.lit("purchase").alias("type"),
    ).join(members.select("member_pk", "member"), on="member_pk", how="left")
    first_tier = happened.sort("occurred_at", "id").group_by("member_pk").first().select(
        "member_pk", pl.col("tier").alias("tier_then"))
    others_members = others.select(
        pl.col("payload").str.json_path_match("$.member").alias("member")).unique()
    involved = (
        members.join(happened.select("member_pk").unique(), on="member_pk", how="semi")
        .vstack(members.join(others_members, on="member", how="semi"))
        .unique("member_pk")
        .join(first_tier, on="member_pk", how="left")
        .join(before, on="member_pk", how="left")
        .with_columns(pl.coalesce("tier_then", "tier").alias("tier"),
                      pl.col("purchases").fill_null(0))
    )
    grouped = (
        buckets.join(involved.select("member_pk", "member"), on="member_pk")
        .group_by("member")
        .agg(pl.col("month"), pl.col("spend_e4"), pl.col("points"), pl.col("visits"))
    )
    columns = ("id", "type", "member", "occurred_at", "order_id", "amount_e4", "store",
               "channel", "lines", "attributes")
    ordered = pl.concat([
        happened.select(*columns, pl.lit(None, pl.String).alias("payload"),
                        pl.col("member").alias("owner")),
        others.select(
            "id", pl.lit("other").alias("type"), pl.lit(None, pl.String).alias("member"),
            "occurred_at", *(pl.lit(None, happened.schema[c]).alias(c) for c in columns[4:]),
            "payload", pl.col("payload").str.json_path_match("$.member").alias("owner")),
    ]).sort("occurred_at", "id")
    step(f"replaying {ordered.height:,} events")
    involved = involved.select("member", "tier", "purchases", "attributes", "enrolled_at")
    if workers <= 1:
        return replay_frames(live, draft, involved, grouped, ordered), ordered
    # Members replay independently (a member's events read and change only that member's
    # tier, buckets, limit usage and purchase count): the members are split in two by a
    # hash of their id, one half replayed in a second process, and the results added up.
    share = pl.col("owner").hash(seed=0) % workers
    member_share = pl.col("member").hash(seed=0) % workers
    parts = [(involved.filter(member_share == i), grouped.filter(member_share == i),
              ordered.filter(share == i)) for i in range(workers)]
    children = children or []
    senders = []
    for child, part in zip(children, parts[1:], strict=True):
        work = (live.model, live.version, draft.model, draft.version, *part)
        sender = threading.Thread(target=_send, args=(child, work), daemon=True)
        sender.start()
        senders.append(sender)
    results = [replay_frames(live, draft, *parts[0])]
    for child, sender in zip(children, senders, strict=True):
        sender.join()
        assert child.stdout is not None
        answer = child.stdout.read()
        if child.wait() != 0 or not answer:
            raise RuntimeError(f"the what-if's second process failed ({child.returncode})")
        results.append(pickle.loads(answer))
    return merge(results), ordered


def _start_children(count: int) -> list[subprocess.Popen[bytes]]:
    """Python processes that wait for a share of the replay on their standard input: started
    before the frames are ready, so that their imports overlap the preparation."""
    code = "from setia.service.whatif import replay_child; replay_child()"
    return [subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE) for _ in range(count)]


def _send(child: subprocess.Popen[bytes], work: tuple[Any, ...]) -> None:
    assert child.stdin is not None
    try:
        child.stdin.write(pickle.dumps(work, protocol=pickle.HIGHEST_PROTOCOL))
    finally:
        child.stdin.close()


def replay_child() -> None:
    """A second process's share of the replay: the programmes (models and versions, compiled
    here again) and the frames of its members come pickled on standard input, the Replay
    goes back pickled on standard output. Nothing is read from or written to a database."""
    live_model, live_version, draft_model, draft_version, *frames = pickle.load(sys.stdin.buffer)
    result = replay_frames(compile_programme(live_model, live_version),
                           compile_programme(draft_model, draft_version), *frames)
    sys.stdout.buffer.write(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
    sys.stdout.buffer.flush()


def replay_frames(live: Programme, draft: Programme, involved: pl.DataFrame,
                  grouped: pl.DataFrame, ordered: pl.DataFrame) -> Replay:
    """The members' starts built from ``involved`` and their tier buckets ``grouped``, and
    the events of ``ordered`` (in time order) replayed (domain/whatif.replay)."""
    bucket_map: dict[str, dict[str, tiers.Bucket]] = {}
    for member, ms, spends, pts, visits in grouped.iter_rows():
        bucket_map[member] = {
            m: tiers.Bucket(Decimal(s).scaleb(-4), p, v)
            for m, s, p, v in zip(ms, spends, pts, visits, strict=True)
        }
    starts = {
        member: MemberStart(member, tier, purchases, json.loads(attributes or "{}"),
                            enrolled_at, bucket_map.get(member, {}))
        for member, tier, purchases, attributes, enrolled_at in involved.iter_rows()
    }
    return replay(live, draft, starts, _events(ordered, live.currency))


def _compare(live: Programme, draft: Programme, result: Replay, posted: pl.DataFrame,
             balances: pl.DataFrame, members: pl.DataFrame, date_to: date, date_from: date
             ) -> dict[str, Any]:
    """``balances``: per member, the journal up to the end of the period (member_delta,
    issued, expired summed)."""
    per = pl.DataFrame(
        {"member": list(result.points),
         "live": [a for a, _ in result.points.values()],
         "draft": [b for _, b in result.points.values()],
         "live_tier": [a for a, _ in result.tiers.values()],
         "draft_tier": [b for _, b in result.tiers.values()]},
        schema={"member": pl.String, "live": pl.Int64, "draft": pl.Int64,
                "live_tier": pl.String, "draft_tier": pl.String},
    ).join(posted, on="member", how="left").with_columns(pl.col("posted").fill_null(0))
    balance = (
        balances.join(members.select("member_pk", "member"), on="member_pk")
        .select("member", pl.col("member_delta").alias("balance"))
    )
    per = per.join(balance, on="member", how="left").with_columns(pl.col("balance").fill_null(0))
    issued_all = int(balances["issued"].sum() or 0)
    expired_all = int(balances["expired"].sum() or 0)
    breakage = Decimal(expired_all) / Decimal(issued_all) if issued_all > 0 else Decimal(0)

    digits = minor_digits(live.currency)

    def side(programme: Programme, column: str, balance: pl.Expr) -> dict[str, Any]:
        config = programme.model.analytics or live.model.analytics
        cost_per_point = config.cost_per_point if config else Decimal(0)
        points = int(per[column].sum() or 0)
        liability = cost_per_point * points
        index = 0 if programme is live else 1
        tier_column = "live_tier" if programme is live else "draft_tier"
        tiers_count = per.group_by(tier_column).agg(pl.len().alias("members")).sort(tier_column)
        with_balance = per.with_columns(balance.alias("_b"))
        return {
            "points_issued": points,
            "points_by_rule": {rule: pts for (i, rule), pts in sorted(result.rules.items())
                               if i == index},
            # money as everywhere in analytics: the currency's digits, rounded half up once
            "liability": an.money(liability * an.E4, digits),
            "cost": an.money(liability * (1 - breakage) * an.E4, digits),
            "tier_distribution": {t: n for t, n in tiers_count.iter_rows()},
            "rewards_affordable": {
                reward.id: int(with_balance.filter(pl.col("_b") >= reward.cost).height)
                for reward in programme.model.rewards
            },
        }

    adjusted = pl.col("balance") - pl.col("posted") + pl.col("draft")
    return {
        "program": live.id,
        "from": date_from.isoformat(),
        "to": date_to.isoformat(),
        "events": result.events,
        "members": per.height,
        "breakage_rate": str(breakage.quantize(Decimal("0.0001"))),
        "posted_points": int(per["posted"].sum() or 0),
        "live": side(live, "live", pl.col("balance")),
        "draft": side(draft, "draft", adjusted),
        "members_affected": int(per.filter(pl.col("live") != pl.col("draft")).height),
        "members_changing_tier": int(
            per.filter(pl.col("live_tier") != pl.col("draft_tier")).height),
    }
