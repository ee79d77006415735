"""End to end: the real ``setia`` console script, run in subprocesses.

Each test talks to the installed entry point exactly as a person or a script
would: arguments in, exit code and stdout/stderr out, with the database named
by SETIA_DATABASE_URL. Members are enrolled through the service
(``upsert_member``) against the same database URL, since the CLI has no
enrolment command.

The scenario used throughout (Kopi Setia: MYR, pending_days 3, tier member x1;
2027-03-01 is a Monday):

- ali and bea enrol at 2027-03-01T09:00+08:00: welcome 50 each (pending).
- JSON Lines file (6 rows, 3 good, 3 bad):
  e1 ali Tue 03-02 42.50 = LATTE coffee 24.00 + CROISSANT pastry 18.50:
     base floor(42.50)=42, pastry-bonus floor(18.50)=18, first-visit 100 -> 160
  e2 ali Wed 03-03 12.00 = KOPI-SETIA coffee 12.00:
     base 12, signature-drink 10 x1 = 10 -> 22
  e3 bea Tue 03-02 8.00 = MUFFIN pastry 8.00:
     base 8, pastry-bonus 8, first-visit needs min 10.00 -> 16
  bad: row 2 unknown member ghost, row 3 not JSON, row 5 amount "abc".
- CSV file (5 data rows on file lines 2..6, 2 good, 3 bad):
  e4 ali Thu 03-04 5.00 = TEA coffee 5.00: base 5 -> 5
  e5 bea Thu 03-04 20.00 = BAGEL pastry 20.00: base 20 + pastry 20 -> 40
  bad: line 3 currency USD, line 4 lines column not JSON, line 6 time without offset.
- Totals: ali 50 + 160 + 22 + 5 = 237, bea 50 + 16 + 40 = 106; all pending
  until run-due: the last earning (03-04 11:00) activates at 03-07 11:00, so
  run-due as of 2027-03-10T00:00+08:00 activates 237 + 106 = 343 points.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import typer

from setia.adapters.db.engine import make_engine
from setia.entrypoints.cli import app
from setia.service.members import upsert_member
from tests.conftest import KOPI_SETIA, assert_journal_ok, scratch_postgres_database

PROGRAM = "kopi-setia"
ENROLLED_AT = "2027-03-01T09:00:00+08:00"


def setia_script() -> str:
    """The installed console script: next to the running interpreter, else on PATH."""
    beside = Path(sys.executable).parent / "setia"
    if beside.exists():
        return str(beside)
    found = shutil.which("setia")
    assert found, "the setia console script is not installed (pip install -e .)"
    return found


SETIA = setia_script()


def run(db_url: str, *args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``setia ARGS`` with SETIA_DATABASE_URL=db_url; no COLUMNS, so rich uses 80 columns."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["SETIA_DATABASE_URL"] = db_url
    return subprocess.run([SETIA, *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, check=False)


def lines_of(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The error reason: exactly one line starting with 'error:', and it is the last one."""
    errors = [line for line in lines_of(result.stderr) if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert lines_of(result.stderr)[-1] == errors[0], result.stderr
    return errors[0]


def summary_row(stdout: str) -> list[int]:
    """rows, applied, replayed, rejected of the import table (the first numeric table row)."""
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.replace("│", "|").split("|") if c.strip()]
        if len(cells) == 6 and all(c.replace(".", "").isdigit() for c in cells):
            return [int(c) for c in cells[:4]]
    raise AssertionError(f"no summary row in:\n{stdout}")


def read_report(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def db_state(db_url: str) -> tuple[int, dict[str, tuple[int, int, int]]]:
    """(journal row count, {member: (available, pending, reserved)}) straight from the tables."""
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            postings = conn.execute(sa.text("SELECT count(*) FROM postings")).scalar_one()
            rows = conn.execute(sa.text(
                "SELECT id, available, pending, reserved FROM members ORDER BY id")).all()
    finally:
        engine.dispose()
    return int(postings), {r.id: (int(r.available), int(r.pending), int(r.reserved)) for r in rows}


def journal_ok(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        assert_journal_ok(engine)
    finally:
        engine.dispose()


def enrol(db_url: str, *members: str) -> None:
    engine = make_engine(db_url)
    try:
        for member in members:
            _, created = upsert_member(engine, PROGRAM, member,
                                       {"name": member.title(), "enrolled_at": ENROLLED_AT})
            assert created
    finally:
        engine.dispose()


def purchase(event_id: str, member: str, when: str, order: str, amount: str,
             lines: list[tuple[str, str, str]]) -> dict[str, object]:
    return {"id": event_id, "type": "purchase", "member": member, "occurred_at": when,
            "order_id": order, "amount": amount, "currency": "MYR", "store": "kl-02",
            "channel": "pos",
            "lines": [{"sku": s, "category": c, "quantity": 1, "amount": a} for s, c, a in lines]}


def write_jsonl(path: Path) -> Path:
    good = [
        purchase("e1", "ali", "2027-03-02T10:00:00+08:00", "o1", "42.50",
                 [("LATTE", "coffee", "24.00"), ("CROISSANT", "pastry", "18.50")]),
        purchase("e2", "ali", "2027-03-03T10:00:00+08:00", "o2", "12.00",
                 [("KOPI-SETIA", "coffee", "12.00")]),
        purchase("e3", "bea", "2027-03-02T12:00:00+08:00", "o3", "8.00",
                 [("MUFFIN", "pastry", "8.00")]),
    ]
    ghost = purchase("bad-ghost", "ghost", "2027-03-02T10:00:00+08:00", "o9", "5.00",
                     [("TEA", "coffee", "5.00")])
    bad_amount = {"id": "bad-amount", "type": "purchase", "member": "bea",
                  "occurred_at": "2027-03-02T10:00:00+08:00", "order_id": "o8", "amount": "abc"}
    rows = [json.dumps(good[0]), json.dumps(ghost), "{not json", json.dumps(good[1]),
            json.dumps(bad_amount), json.dumps(good[2])]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def write_csv(path: Path) -> Path:
    tea = json.dumps([{"sku": "TEA", "category": "coffee", "quantity": 1, "amount": "5.00"}])
    bagel = json.dumps([{"sku": "BAGEL", "category": "pastry", "quantity": 1, "amount": "20.00"}])

    def quoted(text: str) -> str:
        return '"' + text.replace('"', '""') + '"'

    path.write_text(
        "id,type,member,occurred_at,order_id,amount,currency,store,channel,lines\n"
        f"e4,purchase,ali,2027-03-04T10:00:00+08:00,o4,5.00,MYR,kl-02,pos,{quoted(tea)}\n"
        "bad-usd,purchase,bea,2027-03-04T10:00:00+08:00,o7,5.00,USD,kl-02,pos,\n"
        "bad-lines,purchase,bea,2027-03-04T10:00:00+08:00,o6,5.00,MYR,kl-02,pos,[oops\n"
        f"e5,purchase,bea,2027-03-04T11:00:00+08:00,o5,20.00,MYR,kl-02,pos,{quoted(bagel)}\n"
        "bad-time,purchase,bea,2027-03-04T11:00:00,o10,20.00,MYR,kl-02,pos,\n",
        encoding="utf-8",
    )
    return path


def broken_programme(path: Path) -> Path:
    """Kopi Setia with exactly two errors: a lower-case currency and negative pending_days."""
    text = KOPI_SETIA.read_text(encoding="utf-8")
    assert "currency: MYR" in text and "pending_days: 3" in text
    text = text.replace("currency: MYR", "currency: ringgit", 1)
    text = text.replace("pending_days: 3", "pending_days: -2", 1)
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- --help


def command_paths() -> list[tuple[str, ...]]:
    """Every group and command of the Typer app, walked from its click tree."""
    found: list[tuple[str, ...]] = []

    def walk(command: Any, prefix: tuple[str, ...]) -> None:
        # typer ships its own copy of click, so groups are recognised by their commands
        subcommands = getattr(command, "commands", None)
        if isinstance(subcommands, dict):
            for name, sub in sorted(subcommands.items()):
                found.append((*prefix, name))
                walk(sub, (*prefix, name))

    walk(typer.main.get_command(app), ())
    return found


def test_the_command_tree_holds_every_command_of_the_contract() -> None:
    # Given the commands the contract names (section 3) that this build ships
    expected = {("db",), ("db", "upgrade"), ("program",), ("program", "validate"),
                ("program", "load"), ("import",), ("import", "events"), ("member",),
                ("member", "show"), ("run-due",), ("check",), ("demo",)}
    # Then the walk used by the --help test finds each of them
    assert expected <= set(command_paths())


@pytest.mark.parametrize("path", [(), *command_paths()], ids=lambda p: " ".join(p) or "setia")
def test_help_of_every_command_exits_0_with_usage(path: tuple[str, ...], tmp_path: Path) -> None:
    # When asking for help (no database is touched)
    result = run(f"sqlite:///{tmp_path / 'unused.db'}", *path, "--help")
    # Then it exits 0 and prints the usage line
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout
    assert not (tmp_path / "unused.db").exists()


# --------------------------------------------------------------------------- program validate


class TestProgramValidate:
    def test_the_example_programme_is_valid(self, tmp_path: Path) -> None:
        # When validating the shipped example
        result = run(f"sqlite:///{tmp_path / 'x.db'}", "program", "validate", KOPI_SETIA)
        # Then it exits 0 and names the programme
        assert result.returncode == 0, result.stderr
        assert "kopi-setia is valid" in " ".join(result.stdout.split())

    def test_a_broken_file_exits_non_zero_and_prints_every_error_with_its_path(
        self, tmp_path: Path
    ) -> None:
        # Given a copy of the example with two errors
        broken = broken_programme(tmp_path / "broken.yaml")
        # When validating it
        result = run(f"sqlite:///{tmp_path / 'x.db'}", "program", "validate", broken)
        # Then it exits non-zero; stderr names each error's path (rich may wrap long lines,
        # so whitespace is collapsed here; one line per error is tested below)
        assert result.returncode != 0
        flat = " ".join(result.stderr.split())
        assert f"{broken}: currency:" in flat
        assert f"{broken}: points.pending_days:" in flat
        assert one_error_line(result) == f"error: {broken} has 2 error(s)"
        assert result.stdout == ""

    def test_each_error_is_one_line_even_for_a_long_path(self, tmp_path: Path) -> None:
        # Given a broken file deep enough that "path: field: reason" exceeds 80 characters
        folder = tmp_path / "a-folder-with-a-rather-long-name-to-make-every-line-long"
        folder.mkdir()
        broken = broken_programme(folder / "broken.yaml")
        # When validating it without a terminal
        result = run(f"sqlite:///{tmp_path / 'x.db'}", "program", "validate", broken)
        # Then each error is exactly one line, as a script grepping stderr expects
        lines = lines_of(result.stderr)
        assert lines[0].startswith(f"{broken}: currency: ")
        assert lines[1].startswith(f"{broken}: points.pending_days: ")
        assert len(lines) == 3

    @pytest.mark.parametrize(("text", "reason"), [
        ("id: [unclosed", "programme:line 1, column 14: not valid YAML or JSON: while parsing "
                          "a flow sequence, expected ',' or ']', but got '<stream end>'"),
        ("id: a\nearn: []\nname: b\nearn: []\n",
         "programme:line 4, column 1: not valid YAML or JSON: found the key 'earn' twice in "
         "one mapping"),
        ("id: a\nfrom: 2027-02-30\n", "programme:line 2, column 7: not valid YAML or JSON: "
                                       "'2027-02-30' is not a date: day is out of range for "
                                       "month"),
    ], ids=["unclosed", "duplicate-key", "impossible-date"])
    def test_a_file_yaml_cannot_read_is_one_line_naming_the_place(
            self, tmp_path: Path, text: str, reason: str) -> None:
        path = tmp_path / "bad.yaml"
        path.write_text(text, encoding="utf-8")
        result = run(f"sqlite:///{tmp_path / 'x.db'}", "program", "validate", path)
        assert result.returncode == 1
        assert lines_of(result.stderr) == [f"{path}: {reason}",
                                           f"error: {path} has 1 error(s)"]

    def test_a_file_that_is_not_utf8_is_one_line(self, tmp_path: Path) -> None:
        path = tmp_path / "bin.yaml"
        path.write_bytes(b"id: caf\xe9\n")
        result = run(f"sqlite:///{tmp_path / 'x.db'}", "program", "validate", path)
        assert result.returncode == 1
        assert lines_of(result.stderr) == [f"error: cannot read {path}: it is not UTF-8 text "
                                           "(byte 8)"]


@pytest.mark.parametrize(("args", "line"), [
    (("member", "show", "bob"),
     "error: Missing option '--program' / '-p'. (see setia member show --help)"),
    (("nosuch",), "error: No such command 'nosuch'. (see setia --help)"),
    (("audit", "--limit", "-5"), "error: Invalid value for '--limit': Input should be "
                                 "greater than or equal to 1 (see setia audit --help)"),
    (("fraud", "approve", "99999999999999999999", "-p", "kopi-setia"),
     "error: Invalid value for 'review': Input should be less than or equal to "
     "9223372036854775807 (see setia fraud approve --help)"),
], ids=["missing-option", "unknown-command", "audit-limit", "review-id"])
def test_a_command_line_that_cannot_be_read_is_one_line_with_status_2(
        args: tuple[str, ...], line: str, tmp_path: Path) -> None:
    result = run(f"sqlite:///{tmp_path / 'x.db'}", *args)
    assert (result.returncode, lines_of(result.stderr), result.stdout) == (2, [line], "")


def test_a_prompt_left_without_an_answer_is_one_line_and_status_1(tmp_path: Path) -> None:
    # (standard input is empty: the password prompt reads its end)
    result = run(f"sqlite:///{tmp_path / 'x.db'}", "users", "create", "bob", "--role", "owner")
    assert (result.returncode, lines_of(result.stderr)[-1].strip()) == (
        1, "error: aborted: no answer to the prompt")


def test_a_group_without_its_command_prints_its_help_once(tmp_path: Path) -> None:
    result = run(f"sqlite:///{tmp_path / 'x.db'}", "db")
    assert result.returncode == 2
    assert result.stdout.count("Usage: setia db") == 1 and "upgrade" in result.stdout


@pytest.mark.parametrize(("url", "reason"), [
    ("garbage", "Could not parse SQLAlchemy URL from given URL string"),
    ("mysql://a@b/c", "No module named 'MySQLdb'"),
])
def test_a_database_url_setia_cannot_use_is_one_line(url: str, reason: str) -> None:
    result = run(url, "check")
    assert result.returncode == 1
    assert lines_of(result.stderr) == [
        "error: SETIA_DATABASE_URL is not a database Setia can use (sqlite:/// or "
        f"postgresql+psycopg://): {reason}"]


def test_the_members_export_of_a_small_shop_has_only_plausible_predictions(
        tmp_path: Path) -> None:
    # Given the demo café with 30 members: a fit of look-alike members, finite and absurd
    # (a parameter of 1e-20 and predictions below zero) on the machines measured
    db = f"sqlite:///{tmp_path / 'small.db'}"
    built = run(db, "demo", "--members", "30", "--purchases", "600", "--no-serve")
    assert built.returncode == 0, built.stderr
    # When the owner exports the members with their predictions
    out = tmp_path / "members.csv"
    result = run(db, "analytics", "export", "members", out, "-p", "kopi-setia",
                 "--from", "2027-01-01", "--to", "2027-12-31")
    # Then it is written, every prediction empty or a plausible figure, never beyond any
    assert result.returncode == 0, result.stderr
    with out.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 30
    for row in rows:
        if row["predicted_clv"]:
            assert 0 <= float(row["expected_purchases"]) <= 168 * 52
            assert 0 <= float(row["predicted_clv"]) < 1e15


# --------------------------------------------------------------------------- the scenario


@dataclass
class Scenario:
    """A database built once through the CLI; each test works on its own copy."""

    template: Path
    load_first: subprocess.CompletedProcess[str]
    load_again: subprocess.CompletedProcess[str]
    import_jsonl: subprocess.CompletedProcess[str]
    import_csv: subprocess.CompletedProcess[str]
    jsonl: Path
    csv: Path
    jsonl_report: Path
    csv_report: Path


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    folder = tmp_path_factory.mktemp("scenario")
    template = folder / "template.db"
    url = f"sqlite:///{template}"
    load_first = run(url, "program", "load", KOPI_SETIA)
    load_again = run(url, "program", "load", KOPI_SETIA)
    enrol(url, "ali", "bea")
    jsonl, csv = write_jsonl(folder / "events.jsonl"), write_csv(folder / "events.csv")
    jsonl_report, csv_report = folder / "jsonl-rejected.jsonl", folder / "csv-rejected.jsonl"
    import_jsonl = run(url, "import", "events", jsonl, "--program", PROGRAM,
                       "--report", jsonl_report)
    import_csv = run(url, "import", "events", csv, "--program", PROGRAM, "--report", csv_report)
    return Scenario(template, load_first, load_again, import_jsonl, import_csv, jsonl, csv,
                    jsonl_report, csv_report)


@pytest.fixture
def db(scenario: Scenario, tmp_path: Path) -> str:
    """A private copy of the scenario's SQLite database (every CLI process has exited)."""
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{scenario.template}{suffix}")
        if source.exists():
            shutil.copy(source, tmp_path / f"setia.db{suffix}")
    return f"sqlite:///{tmp_path / 'setia.db'}"


def member_json(db_url: str, member: str) -> dict[str, object]:
    result = run(db_url, "member", "show", member, "--program", PROGRAM, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


class TestLoadAndImportOnSqlite:
    def test_loading_the_same_programme_twice_leaves_it_unchanged(
        self, scenario: Scenario, db: str
    ) -> None:
        # Then the first load stores version 1 and the second says unchanged
        assert scenario.load_first.returncode == 0, scenario.load_first.stderr
        assert scenario.load_first.stdout.strip() == "programme kopi-setia stored as version 1"
        assert scenario.load_again.returncode == 0, scenario.load_again.stderr
        assert scenario.load_again.stdout.strip() == \
            "programme kopi-setia unchanged, still version 1"
        journal_ok(db)

    def test_json_lines_import_loads_good_rows_and_reports_bad_ones(
        self, scenario: Scenario, db: str
    ) -> None:
        # Then 6 rows: 3 applied, 0 replayed, 3 rejected
        result = scenario.import_jsonl
        assert result.returncode == 0, result.stderr
        assert summary_row(result.stdout) == [6, 3, 0, 3]
        assert f"3 row(s) rejected; see {scenario.jsonl_report}" in " ".join(result.stderr.split())
        # And the report holds exactly the bad rows, each with its line and problem
        report = read_report(scenario.jsonl_report)
        assert [r["row"] for r in report] == [2, 3, 5]
        assert [r.get("id") for r in report] == ["bad-ghost", None, "bad-amount"]
        assert report[0]["problem"]["field"] == "member"  # type: ignore[index]
        assert report[0]["problem"]["type"].endswith("/unknown-member")  # type: ignore[index]
        assert report[1]["problem"]["detail"].startswith("not JSON")  # type: ignore[index]
        assert report[2]["problem"]["field"] == "amount"  # type: ignore[index]
        journal_ok(db)

    def test_csv_import_reads_the_lines_column_as_json_and_reports_bad_rows(
        self, scenario: Scenario, db: str
    ) -> None:
        # Then 5 rows: 2 applied, 3 rejected
        result = scenario.import_csv
        assert result.returncode == 0, result.stderr
        assert summary_row(result.stdout) == [5, 2, 0, 3]
        # And the report names the file lines 3, 4 and 6 (line 1 is the header)
        report = read_report(scenario.csv_report)
        assert [r["row"] for r in report] == [3, 4, 6]
        assert report[0]["problem"]["field"] == "currency"  # type: ignore[index]
        assert "lines" in report[1]["problem"]["detail"]  # type: ignore[index]
        assert report[2]["problem"]["field"] == "occurred_at"  # type: ignore[index]
        journal_ok(db)

    def test_the_good_rows_of_both_files_are_in_the_balances(self, db: str) -> None:
        # Then (module docstring) ali has 237 pending, bea 106, nothing available yet
        _, balances = db_state(db)
        assert balances == {"ali": (0, 237, 0), "bea": (0, 106, 0)}
        journal_ok(db)

    @pytest.mark.parametrize("kind", ["jsonl", "csv"])
    def test_reimporting_a_file_applies_nothing_and_replays_every_good_row(
        self, scenario: Scenario, db: str, tmp_path: Path, kind: str
    ) -> None:
        # Given the database after both imports
        before = db_state(db)
        source = scenario.jsonl if kind == "jsonl" else scenario.csv
        # When importing the same file again
        result = run(db, "import", "events", source, "--program", PROGRAM,
                     "--report", tmp_path / "again.jsonl")
        # Then nothing is applied, the good rows replay and the bad ones are rejected again
        assert result.returncode == 0, result.stderr
        expected = [6, 0, 3, 3] if kind == "jsonl" else [5, 0, 2, 3]
        assert summary_row(result.stdout) == expected
        # And the journal and balances did not change
        assert db_state(db) == before
        journal_ok(db)

    def test_member_show_json_prints_the_member_object_with_exact_balances(
        self, db: str
    ) -> None:
        # When showing ali as JSON
        view = member_json(db, "ali")
        # Then it is the API's member object with the balances of the module docstring
        assert view["id"] == "ali"
        assert view["name"] == "Ali"
        assert view["balances"] == {"available": 0, "pending": 237, "reserved": 0}
        assert view["tier"]["id"] == "member"  # type: ignore[index]
        assert {"email", "phone", "birthday", "attributes", "enrolled_at", "expiring"} <= set(view)
        journal_ok(db)

    def test_run_due_activates_pending_points_and_check_passes(self, db: str) -> None:
        # When running run-due after every pending lot's activation time
        result = run(db, "run-due", "--as-of", "2027-03-10T00:00:00+08:00")
        # Then it exits 0 and reports 237 + 106 = 343 points activated
        assert result.returncode == 0, result.stderr
        assert any("points activated" in line and line.split()[-2:] == ["343", "│"]
                   for line in result.stdout.splitlines()), result.stdout
        # And the members' points are all available
        assert member_json(db, "ali")["balances"] == {"available": 237, "pending": 0,
                                                      "reserved": 0}
        assert member_json(db, "bea")["balances"] == {"available": 106, "pending": 0,
                                                      "reserved": 0}
        # And check exits 0
        checked = run(db, "check")
        assert checked.returncode == 0, checked.stderr
        assert checked.stdout.startswith("journal ok:")
        journal_ok(db)

    def test_run_due_twice_changes_nothing_the_second_time(self, db: str) -> None:
        # Given run-due has run once
        assert run(db, "run-due", "--as-of", "2027-03-10T00:00:00+08:00").returncode == 0
        before = db_state(db)
        # When it runs again at the same time
        result = run(db, "run-due", "--as-of", "2027-03-10T00:00:00+08:00")
        # Then it succeeds and the journal and balances are as they were
        assert result.returncode == 0, result.stderr
        assert db_state(db) == before
        journal_ok(db)

    def test_check_exits_1_with_a_one_line_reason_after_tampering(self, db: str) -> None:
        # Given run-due ran and someone edits cached balances behind the journal's back
        assert run(db, "run-due", "--as-of", "2027-03-10T00:00:00+08:00").returncode == 0
        engine = make_engine(db)
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE members SET available = available + 1"))
        engine.dispose()
        # When checking
        result = run(db, "check")
        # Then it exits 1, names both members, and ends with one error line
        assert result.returncode == 1
        assert "kopi-setia/ali" in result.stderr and "kopi-setia/bea" in result.stderr
        assert "problem" in one_error_line(result)
        assert result.stdout == ""

    @pytest.mark.parametrize("args", [
        ("member", "show", "ali", "--program", "nope"),
        ("import", "events", "{jsonl}", "--program", "nope"),
        ("run-due", "--as-of", "2027-03-10T00:00:00+08:00", "--program", "nope"),
        ("webhooks", "list", "--program", "nope"),
        ("webhooks", "dead", "--program", "nope"),
        ("webhooks", "remove", "we_1", "--program", "nope"),
        ("audit", "--program", "nope"),
        ("fraud", "reviews", "--program", "nope"),
        ("import", "events", "{empty}", "--program", "nope"),
    ], ids=["member-show", "import-events", "run-due", "webhooks-list", "webhooks-dead",
            "webhooks-remove", "audit", "fraud-reviews", "import-nothing"])
    def test_an_unknown_programme_is_a_one_line_error(
        self, scenario: Scenario, db: str, args: tuple[str, ...]
    ) -> None:
        # Given the state before
        before = db_state(db)
        # When naming a programme that does not exist
        empty = scenario.jsonl.with_name("empty.jsonl")
        empty.write_text("", encoding="utf-8")
        argv = [{"{jsonl}": str(scenario.jsonl), "{empty}": str(empty)}.get(a, a)
                for a in args]
        result = run(db, *argv)
        # Then it exits non-zero with one error line naming the programme
        assert result.returncode != 0
        line = one_error_line(result)
        assert "nope" in line
        # And nothing changed
        assert db_state(db) == before
        journal_ok(db)

    def test_a_webhook_endpoint_is_added_and_removed_once(self, db: str) -> None:
        # Given an endpoint added (its id, then its secret alone on the last line)
        added = run(db, "webhooks", "add", "https://shop.example/hooks", "--program",
                    "kopi-setia")
        assert added.returncode == 0, added.stderr
        endpoint, secret = lines_of(added.stdout)
        assert endpoint.startswith("we_") and secret.startswith("whsec_")
        # When it is removed
        removed = run(db, "webhooks", "remove", endpoint, "--program", "kopi-setia")
        # Then it is no longer listed, and removing it again is a one-line error
        assert (removed.returncode, removed.stdout) == (0, f"removed {endpoint}\n")
        listed = run(db, "webhooks", "list", "--program", "kopi-setia")
        assert json.loads(listed.stdout) == []
        again = run(db, "webhooks", "remove", endpoint, "--program", "kopi-setia")
        assert again.returncode == 1
        assert one_error_line(again) == (f"error: no active webhook endpoint {endpoint!r} "
                                         "(field webhook)")
        journal_ok(db)

    def test_member_show_of_an_unknown_programme_prints_only_the_error(self, db: str) -> None:
        # When showing a member of a programme that does not exist
        result = run(db, "member", "show", "ali", "--program", "nope")
        # Then stderr is that single line and stdout is empty
        assert result.returncode != 0
        assert lines_of(result.stderr) == ["error: no programme 'nope'; store one first "
                                           "(field program)"]
        assert result.stdout == ""
        journal_ok(db)

    def test_run_due_with_a_time_without_offset_is_refused_with_one_line(self, db: str) -> None:
        # Given the state before
        before = db_state(db)
        # When run-due gets a naive time
        result = run(db, "run-due", "--as-of", "2027-03-10T00:00:00")
        # Then it exits non-zero with one line that says the offset is missing
        assert result.returncode != 0
        assert lines_of(result.stderr) == [one_error_line(result)]
        assert "offset" in one_error_line(result)
        assert "--as-of" in one_error_line(result)
        # And no points were activated
        assert db_state(db) == before
        journal_ok(db)

    def test_importing_a_missing_file_is_a_one_line_error(self, db: str, tmp_path: Path) -> None:
        before = db_state(db)
        # When importing a file that does not exist
        result = run(db, "import", "events", tmp_path / "missing.jsonl", "--program", PROGRAM)
        # Then it exits non-zero with one line naming the file
        assert result.returncode != 0
        assert "missing.jsonl" in one_error_line(result)
        assert db_state(db) == before
        journal_ok(db)

    def test_importing_a_directory_is_a_one_line_error(self, db: str, tmp_path: Path) -> None:
        before = db_state(db)
        folder = tmp_path / "events.jsonl"
        folder.mkdir()
        result = run(db, "import", "events", folder, "--program", PROGRAM)
        assert result.returncode == 1
        assert "Traceback" not in result.stderr
        assert one_error_line(result) == f"error: not a file: {folder}"
        assert db_state(db) == before

    def test_a_report_that_cannot_be_written_is_refused_before_the_import(
            self, db: str, scenario: Scenario, tmp_path: Path) -> None:
        before = db_state(db)
        report = tmp_path / "no-such-dir" / "rejected.jsonl"
        result = run(db, "import", "events", scenario.jsonl, "--program", PROGRAM,
                     "--report", report)
        assert result.returncode == 1
        assert "Traceback" not in result.stderr
        assert one_error_line(result) == (f"error: cannot write {report}: no such directory "
                                          f"{report.parent}")
        assert db_state(db) == before

    def test_a_privacy_export_that_cannot_be_written_is_a_one_line_error(
            self, db: str, tmp_path: Path) -> None:
        out = tmp_path / "no-such-dir" / "ali.json"
        result = run(db, "privacy", "export", "ali", "--program", PROGRAM, "--out", out)
        assert result.returncode == 1
        assert "Traceback" not in result.stderr
        assert one_error_line(result) == f"error: cannot write {out}: No such file or directory"

    def test_an_analytics_export_to_a_missing_directory_names_the_reason(
            self, db: str, tmp_path: Path) -> None:
        out = tmp_path / "no-such-dir" / "members.csv"
        result = run(db, "analytics", "export", "members", out, "--program", PROGRAM,
                     "--from", "2027-03-01", "--to", "2027-03-31")
        assert result.returncode == 1
        line = one_error_line(result)
        assert line.startswith(f"error: cannot write {out}: ")
        assert not line.endswith(": None"), line  # polars' OSError has no strerror

    @pytest.mark.parametrize("value", ["NaN", "Infinity", "-inf", "sNaN"])
    def test_a_cost_per_point_that_is_not_a_finite_number_is_a_one_line_error(
            self, db: str, value: str) -> None:
        result = run(db, "report", "--program", PROGRAM, "--from", "2027-03-01",
                     "--to", "2027-03-31", "--cost-per-point", value)
        assert result.returncode == 1
        assert "Traceback" not in result.stderr
        assert one_error_line(result) == (
            f"error: --cost-per-point must be a decimal number, not {value!r}")


@pytest.mark.parametrize("value", ["0", "many", "257"])
def test_serve_refuses_a_bad_thread_count_in_one_line_before_starting(
        value: str, tmp_path: Path) -> None:
    # Given SETIA_API_THREADS that is not a whole number from 1 to 256
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env.update(SETIA_DATABASE_URL=f"sqlite:///{tmp_path / 'serve.db'}", SETIA_API_THREADS=value)
    # When serving
    result = subprocess.run([SETIA, "serve", "--no-scheduler", "--port", "1"], env=env,
                            capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL, check=False)
    # Then it exits 1 with one line naming the variable and the value, having started
    # nothing (no database file made)
    assert result.returncode == 1
    assert one_error_line(result) == (
        f"error: SETIA_API_THREADS must be a whole number from 1 to 256, not {value!r}")
    assert not (tmp_path / "serve.db").exists()


# --------------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """A scratch database of our own on the local server, dropped afterwards."""
    with scratch_postgres_database("setia_e2e") as url:
        yield url


@pytest.mark.postgres
class TestCliOnPostgres:
    def test_load_import_show_run_due_check_and_tamper(self, pg_url: str, tmp_path: Path) -> None:
        # Given the programme loaded twice through the CLI (it migrates the empty database)
        first = run(pg_url, "program", "load", KOPI_SETIA)
        assert first.returncode == 0, first.stderr
        assert first.stdout.strip() == "programme kopi-setia stored as version 1"
        again = run(pg_url, "program", "load", KOPI_SETIA)
        assert again.stdout.strip() == "programme kopi-setia unchanged, still version 1"
        # And ali and bea enrolled through the service
        enrol(pg_url, "ali", "bea")
        # When importing both files
        jsonl, csv = write_jsonl(tmp_path / "events.jsonl"), write_csv(tmp_path / "events.csv")
        report = tmp_path / "rejected.jsonl"
        first_import = run(pg_url, "import", "events", jsonl, "--program", PROGRAM,
                           "--report", report)
        assert first_import.returncode == 0, first_import.stderr
        assert summary_row(first_import.stdout) == [6, 3, 0, 3]
        assert [r["row"] for r in read_report(report)] == [2, 3, 5]
        csv_import = run(pg_url, "import", "events", csv, "--program", PROGRAM,
                         "--report", tmp_path / "csv-rejected.jsonl")
        assert summary_row(csv_import.stdout) == [5, 2, 0, 3]
        # And importing the JSON Lines file again replays it
        before = db_state(pg_url)
        replay = run(pg_url, "import", "events", jsonl, "--program", PROGRAM,
                     "--report", tmp_path / "again.jsonl")
        assert summary_row(replay.stdout) == [6, 0, 3, 3]
        assert db_state(pg_url) == before
        # Then the balances are those of the module docstring
        assert member_json(pg_url, "ali")["balances"] == {"available": 0, "pending": 237,
                                                          "reserved": 0}
        # When run-due activates everything
        due = run(pg_url, "run-due", "--as-of", "2027-03-10T00:00:00+08:00")
        assert due.returncode == 0, due.stderr
        assert member_json(pg_url, "bea")["balances"] == {"available": 106, "pending": 0,
                                                          "reserved": 0}
        # Then check exits 0
        checked = run(pg_url, "check")
        assert checked.returncode == 0, checked.stderr
        journal_ok(pg_url)
        # And a naive --as-of is refused without changes
        before = db_state(pg_url)
        naive = run(pg_url, "run-due", "--as-of", "2027-03-10T00:00:00")
        assert naive.returncode != 0
        assert "offset" in one_error_line(naive)
        assert db_state(pg_url) == before
        # When the cached balances are tampered with
        engine = make_engine(pg_url)
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE members SET available = available + 1"))
        engine.dispose()
        # Then check exits 1 with one error line
        tampered = run(pg_url, "check")
        assert tampered.returncode == 1
        assert "problem" in one_error_line(tampered)


@pytest.mark.postgres
@pytest.mark.parametrize("args", [("check",), ("run-due",), ("member", "show", "ana",
                                                              "--program", PROGRAM)])
def test_a_database_that_cannot_be_reached_ends_a_command_with_one_line(
        args: tuple[str, ...]) -> None:
    # Given a PostgreSQL URL whose database does not exist
    url = sa.make_url(os.environ.get("SETIA_TEST_DATABASE_URL",
                                     "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    missing = url.set(database="setia_no_such_database").render_as_string(hide_password=False)
    # When a command needs it, then it exits 1 with one line naming the database, no traceback
    result = run(missing, *args)
    assert result.returncode == 1, result.stderr
    line = one_error_line(result)
    assert line.startswith("error: cannot use the database postgresql+psycopg://")
    assert '"setia_no_such_database" does not exist' in line
    assert "Traceback" not in result.stderr
