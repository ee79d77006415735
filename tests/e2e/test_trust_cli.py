"""``setia privacy|fraud|audit|member token|db partitions`` against real databases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from setia.adapters.db.engine import make_engine
from setia.adapters.db.migrate import upgrade
from setia.service.events import ingest_event
from setia.service.members import upsert_member
from tests.conftest import fixed_clock, load_programme
from tests.e2e.api_server import CAFE_PROGRAMME, assert_setia_check_ok, database_url, run_setia

CAFE = CAFE_PROGRAMME["id"]
CLOCK = fixed_clock("2026-03-02T09:00:00+08:00")


def prepared(url: str) -> None:
    engine = make_engine(url)
    upgrade(engine)
    load_programme(engine, {**CAFE_PROGRAMME,
                            "fraud": {"velocity": [{"per": "day", "max_points": 100}]}})
    upsert_member(engine, CAFE, "cust-1", {"name": "Lim Wei", "email": "lim@example.my"}, CLOCK)
    ingest_event(engine, CAFE, {
        "id": "big-1", "type": "purchase", "member": "cust-1", "order_id": "o1",
        "occurred_at": "2026-03-02T10:00:00+08:00", "amount": "120.00", "currency": "MYR",
        "store": "pg-01"}, CLOCK)  # 120 + first-visit 100 > 100 a day: held
    engine.dispose()


def test_the_trust_commands_from_the_command_line(tmp_path: Path) -> None:
    with database_url("sqlite", tmp_path) as url:
        prepared(url)
        queue = run_setia(url, "fraud", "reviews", "--program", CAFE, "--json")
        assert queue.returncode == 0, queue.stderr
        (review,) = json.loads(queue.stdout)
        assert (review["event"], review["points"], review["held"]) == ("big-1", 220, True)
        approved = run_setia(url, "fraud", "approve", str(review["id"]), "--program", CAFE)
        assert approved.returncode == 0, approved.stderr
        assert "approved" in approved.stdout and "'available': 270" in approved.stdout

        token = run_setia(url, "member", "token", "cust-1", "--program", CAFE, "--days", "7")
        assert token.returncode == 0 and token.stdout.strip().splitlines()[-1].startswith("smt_")

        exported = run_setia(url, "privacy", "export", "cust-1", "--program", CAFE)
        assert json.loads(exported.stdout)["member"]["email"] == "lim@example.my"

        refused = run_setia(url, "privacy", "erase", "cust-1", "--program", CAFE)
        assert refused.returncode == 1
        assert refused.stderr.strip() == "error: erasure cannot be undone; add --yes to confirm"
        erased = run_setia(url, "privacy", "erase", "cust-1", "--program", CAFE, "--yes")
        assert erased.returncode == 0 and "member erased; now erased-" in erased.stdout
        unknown = run_setia(url, "privacy", "export", "cust-1", "--program", CAFE)
        assert unknown.returncode == 1 and len(unknown.stderr.strip().splitlines()) == 1

        audit = run_setia(url, "audit", "--program", CAFE)
        rows = [json.loads(line) for line in audit.stdout.splitlines()]
        assert [r["action"] for r in rows] == [
            "programme.store", "review.approve", "member_token.issue", "member.export",
            "member.erase"]
        assert all(r["actor"].startswith("cli:") for r in rows[1:])
        assert "lim@example.my" not in audit.stdout

        assert "not partitioned" in run_setia(url, "db", "partitions").stdout
        assert_setia_check_ok(url)


@pytest.mark.postgres
def test_db_partitions_makes_months_and_moves_their_rows(tmp_path: Path) -> None:
    with database_url("postgres", tmp_path, "setia_e2e_parts") as url:
        prepared(url)
        engine = make_engine(url)
        upsert_member(engine, CAFE, "cust-9", {}, CLOCK)
        ingest_event(engine, CAFE, {
            "id": "far-1", "type": "review", "member": "cust-9",
            "occurred_at": "2033-01-05T10:00:00+08:00"}, CLOCK)
        result = run_setia(url, "db", "partitions", "--from", "2033-01", "--months-ahead", "0")
        assert result.returncode == 0, result.stderr
        assert "2 partition(s) created, 2 row(s) moved from DEFAULT" in result.stdout
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM postings_2033_01")).scalar_one() == 1
        engine.dispose()
        bad = run_setia(url, "db", "partitions", "--from", "2033-13")
        assert bad.returncode == 1
        assert bad.stderr.strip() == "error: --from must be a month such as 2027-03"
        assert_setia_check_ok(url)
