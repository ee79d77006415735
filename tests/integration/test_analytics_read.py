"""The analytics reader's point flows and tier buckets, with the filters the what-if reads
them by, on SQLite and PostgreSQL over the hand-built history (analytics_history.py)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import polars as pl
import pytest
import sqlalchemy as sa

from setia.adapters.db.analytics_read import FLOW_COLUMNS, reader
from tests.integration.analytics_history import P, build

MYT = timezone(timedelta(hours=8))


def local(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=MYT)


@pytest.fixture
def cafe(engine: sa.Engine) -> sa.Engine:
    build(engine)
    return engine


def _by_member(frame: pl.DataFrame, members: pl.DataFrame) -> pl.DataFrame:
    return frame.join(members.select("member_pk", "member"), on="member_pk").drop("member_pk")


def test_every_flow_of_the_journal_adds_up_to_the_balances(cafe: sa.Engine) -> None:
    # given the history: 250 points issued (a clawback of 10 counts against it), 20
    # redeemed, 30 expired by run-due on 15 March
    with reader(cafe) as read:
        members = read.members(P)
        postings = read.postings(P)
        flows = read.posting_flows(P)
    totals = {"issued": 250, "redeemed": 20, "expired": 30, "adjusted": 0,
              "member_delta": 200}
    assert postings.columns == ["member_pk", "occurred_at", *FLOW_COLUMNS]
    assert postings.select(pl.col(FLOW_COLUMNS).sum()).row(0, named=True) == totals
    assert members.select(pl.sum_horizontal("available", "pending", "reserved").sum()
                          ).item() == 200
    if cafe.dialect.name == "sqlite":
        assert flows is None  # no date_bin: the metrics read per posting
    else:
        assert flows is not None
        assert flows.select(pl.col(FLOW_COLUMNS).sum()).row(0, named=True) == totals


def test_postings_of_a_code_and_a_period_with_only_the_columns_asked(cafe: sa.Engine) -> None:
    # when the earn postings of February (local time) are read, as the what-if does
    with reader(cafe) as read:
        members = read.members(P)
        earned = read.postings(P, columns=("member_pk", "ref", "issued"), code="earn",
                               since=local("2027-02-01T00:00"), until=local("2027-03-01T00:00"))
        balances = read.postings(
            P, columns=("member_pk", "member_delta", "issued", "expired"),
            until=local("2027-03-01T00:00"))
        # since is included, until left out: e4 (10:00 on 10 February) and the redemption
        # of the 12th, not e5 at 10:00 on the 14th
        window = read.postings(P, since=local("2027-02-10T10:00"),
                               until=local("2027-02-14T10:00"), detail=True)
    # then e3 (07:00 on 1 February, still 31 January in UTC) is in, the clawback is not
    assert _by_member(earned, members).sort("ref").rows() == [
        ("e3", 30, "bob"), ("e4", 40, "ann"), ("e5", 50, "cat"), ("signup:cat", 10, "cat")]
    assert earned.schema == {"member_pk": pl.Int64, "ref": pl.String, "issued": pl.Int64}
    # before March nothing has expired; cat's clawback of 10 counts against issued
    assert _by_member(balances, members).group_by("member").agg(pl.all().sum()).sort(
        "member").rows() == [("ann", 140, 160, 0), ("bob", 40, 40, 0), ("cat", 50, 50, 0)]
    window = window.sort("occurred_at")
    assert window.select("code", "issued", "redeemed", "member_delta").rows() == [
        ("earn", 40, 0, 40), ("redeem", 0, 20, -20)]
    assert window["ref"][0] == "e4" and window["ref"][1].startswith("rdm_")


def test_metric_buckets_of_some_months(cafe: sa.Engine) -> None:
    with reader(cafe) as read:
        members = read.members(P)
        every = read.metric_buckets(P)
        january = read.metric_buckets(P, months=("2027-01",))
        none = read.metric_buckets(P, months=())
        malformed = read.metric_buckets(P, months=("2027-1",))
    assert _by_member(every, members).sort("member", "month").rows() == [
        ("2027-01", 1_100_000, 120, 2, "ann"), ("2027-02", 200_000, 40, 1, "ann"),
        ("2027-01", 0, 10, 0, "bob"), ("2027-02", 300_000, 30, 1, "bob"),
        ("2027-02", 400_000, 50, 1, "cat")]
    assert _by_member(january, members).sort("member").rows() == [
        ("2027-01", 1_100_000, 120, 2, "ann"), ("2027-01", 0, 10, 0, "bob")]
    for empty in (none, malformed):  # no month asked (or none in YYYY-MM): no bucket
        assert empty.height == 0 and empty.schema == every.schema


def test_what_the_whatif_replays_a_period_from(cafe: sa.Engine) -> None:
    # given February (local time): e3 at 07:00 on the 1st is 31 January in UTC
    since, until = local("2027-02-01T00:00"), local("2027-03-01T00:00")
    with reader(cafe) as read:
        members = read.members(P, attributes=True)
        purchases = read.stored_purchases(P, since, until)
        before = read.purchase_counts(P, since)
        others = read.stored_events(P, since, until, excluding=("purchase", "refund"))
        every = read.stored_events(P, since, until)
        none = read.stored_events(P, local("2030-01-01T00:00"), local("2030-02-01T00:00"))
    assert members.select("member", "tier", "available", "attributes").sort("member").rows(
        ) == [("ann", "gold", 110, "{}"), ("bob", "member", 40, "{}"), ("cat", "member", 50, "{}")]
    assert _by_member(purchases, members).sort("id").select(
        "id", "order_id", "amount_e4", "lines", "tier", "member").rows() == [
        ("e3", "o-e3", 300_000, "[]", "member", "bob"),
        ("e4", "o-e4", 200_000, "[]", "gold", "ann"),
        ("e5", "o-e5", 500_000, "[]", "member", "cat")]
    assert json.loads(purchases.sort("id")["payload"][1]) == {
        "id": "e4", "type": "purchase", "member": "ann", "occurred_at": "2027-02-10T10:00:00+08:00",
        "order_id": "o-e4", "amount": "20.00", "store": "s2", "channel": "app", "lines": []}
    # only ann bought before February (e1, e2)
    assert _by_member(before, members).rows() == [(2, "ann")]
    assert others.select("id").rows() == [("signup:cat",)]
    assert json.loads(others["payload"][0]) == {
        "id": "signup:cat", "type": "signup", "member": "cat",
        "occurred_at": "2027-02-03T09:00:00+08:00"}
    assert sorted(every["id"]) == ["e3", "e4", "e5", "r5", "signup:cat"]
    assert purchases.schema["occurred_at"] == others.schema["occurred_at"] == pl.Datetime(
        "us", "UTC")
    # an empty answer keeps its text columns text (SQLite's driver would type them integers)
    assert none.height == 0 and none.schema["id"] == none.schema["payload"] == pl.String


def test_postgresql_reads_run_without_jit_and_with_256_mb_of_work_mem(engine: sa.Engine) -> None:
    with reader(engine) as read:
        if engine.dialect.name == "sqlite":
            assert read.sqlite
            return
        settings = read.frame("SELECT current_setting('jit') AS jit, "
                              "current_setting('work_mem') AS work_mem")
    assert settings.rows() == [("off", "256MB")]


def test_the_reads_of_one_reader_see_one_moment(cafe: sa.Engine) -> None:
    # Given a reader that has read the members' buckets once
    with reader(cafe) as read:
        before = read.metric_buckets(P)
        # When another connection changes a bucket and commits meanwhile
        with cafe.begin() as conn:
            changed = conn.execute(sa.text(
                "UPDATE metric_buckets SET points = points + 1000")).rowcount
        # Then the reader's later reads still see the moment of its first
        again = read.metric_buckets(P)
    assert changed > 0
    assert again.equals(before)
    with reader(cafe) as fresh:
        after = fresh.metric_buckets(P)
    assert after["points"].sum() == before["points"].sum() + 1000 * changed


@pytest.mark.postgres
def test_a_purchase_committed_while_a_report_reads_is_in_every_figure_or_in_none(
        pg_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the café's history, and a report whose two connections read at once
    import threading
    from datetime import date

    from setia.adapters.db import analytics_read
    from setia.service import analytics as an
    from setia.service.check import check
    from tests.integration.analytics_history import purchase

    build(pg_engine)
    window = (date(2027, 1, 1), date(2027, 12, 31))
    before = an.metrics(pg_engine, P, *window, ("sales", "points"), grain="total")
    committed = threading.Event()
    orders, members = analytics_read.Reader.orders, analytics_read.Reader.members

    def orders_then_a_purchase(self: analytics_read.Reader, *args: object, **kw: object) -> object:
        # When a till commits a purchase just after the orders were read on one connection
        found = orders(self, *args, **kw)
        if not committed.is_set():
            purchase(pg_engine, "late", "ann", "2027-03-25T10:00:00+08:00", "70.00", "s1",
                     "pos")
            committed.set()
        return found

    def members_after_it(self: analytics_read.Reader, *args: object, **kw: object) -> object:
        # and before the members and the journal are read on the other
        assert committed.wait(30)
        return members(self, *args, **kw)

    monkeypatch.setattr(analytics_read.Reader, "orders", orders_then_a_purchase)
    monkeypatch.setattr(analytics_read.Reader, "members", members_after_it)
    during = an.metrics(pg_engine, P, *window, ("sales", "points"), grain="total")
    monkeypatch.undo()
    after = an.metrics(pg_engine, P, *window, ("sales", "points"), grain="total")

    # Then the report is the database before the purchase, in sales and points alike
    assert during == before
    assert after["metrics"]["sales"][0]["purchases"] == (
        before["metrics"]["sales"][0]["purchases"] + 1)
    assert after["metrics"]["points"][0]["issued"] > before["metrics"]["points"][0]["issued"]
    assert check(pg_engine).problems == []


@pytest.mark.postgres
def test_a_purchase_committed_during_an_audit_is_no_mismatch(
        pg_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the café's history, and an audit that has read the metrics' frames
    from datetime import date

    from setia.service import analytics_reports
    from setia.service.check import check
    from tests.integration.analytics_history import purchase

    build(pg_engine)
    totals = analytics_reports._journal_totals
    late: list[str] = []

    def a_purchase_first(*args: object, **kw: object) -> object:
        # When a till commits a purchase before the journal's own sums are taken
        if not late:
            late.append("late")
            purchase(pg_engine, "late", "ann", "2027-03-25T10:00:00+08:00", "70.00", "s1",
                     "pos")
        return totals(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(analytics_reports, "_journal_totals", a_purchase_first)
    report = analytics_reports.audit(pg_engine, P, date(2027, 1, 1), date(2027, 12, 31),
                                     grain="total")
    # Then the sums and the metrics are of one moment: no mismatch
    assert late == ["late"]
    assert report["ok"] is True, report
    assert check(pg_engine).problems == []
