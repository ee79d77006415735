"""Bulk import: one unit of work per batch, idempotent by event id within and across batches."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from setia.service.importer import count_rows, import_events
from setia.service.members import get_member, upsert_member
from tests.conftest import assert_journal_ok, fixed_clock

CLOCK = fixed_clock("2027-02-01T09:00:00+08:00")


def purchase(event_id: str, order_id: str, amount: str) -> dict[str, str]:
    return {"id": event_id, "type": "purchase", "member": "ali", "order_id": order_id,
            "occurred_at": "2027-02-02T10:00:00+08:00", "amount": amount}


def write(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def journal_rows(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("select count(*) from postings")).scalar_one())



def imported(engine: sa.Engine, *files: Path) -> tuple[list[dict[str, Any]], list[Any]]:
    """Each file's import summary, and the rows all of them reported, in order."""
    summaries = [import_events(engine, "kopi-setia", file, batch_size=10, clock=CLOCK)
                 for file in files]
    return summaries, [json.loads(line) for summary in summaries if summary["report"]
                       for line in Path(summary["report"]).read_text().splitlines()]

def test_a_repeated_event_in_one_batch_is_applied_once_and_a_changed_one_refused(kopi, tmp_path):
    # Given a member (50 pending welcome Beans) and a file where e1 appears three times:
    # once more unchanged, once with another amount
    upsert_member(kopi, "kopi-setia", "ali", {}, CLOCK)
    file = write(tmp_path / "events.jsonl", [
        purchase("e1", "o1", "5.00"), purchase("e1", "o1", "5.00"),
        purchase("e1", "o1", "9.00"), purchase("e2", "o2", "3.00"),
    ])
    # When it is imported as one batch
    summary = import_events(kopi, "kopi-setia", file, batch_size=10, clock=CLOCK)
    # Then e1 and e2 apply once (5 + 3 base Beans, no first-visit bonus under RM 10),
    # the repeat replays and the changed repeat is refused into the report
    assert (summary["applied"], summary["replayed"], summary["rejected"]) == (2, 1, 1)
    rejected = [json.loads(line) for line in Path(summary["report"]).read_text().splitlines()]
    assert [(r["row"], r["problem"]["type"].rsplit("/", 1)[1]) for r in rejected] == [
        (3, "idempotency-conflict")]
    assert get_member(kopi, "kopi-setia", "ali", CLOCK)["balances"] == {
        "available": 0, "pending": 50 + 5 + 3, "reserved": 0}
    rows = journal_rows(kopi)
    # And importing the file again changes nothing
    again = import_events(kopi, "kopi-setia", file, batch_size=2, clock=CLOCK)
    assert (again["applied"], again["replayed"], again["rejected"]) == (0, 3, 1)
    assert journal_rows(kopi) == rows
    assert_journal_ok(kopi)


def test_lines_that_cannot_be_read_go_to_the_report_and_the_rest_load(kopi, tmp_path):
    # Given ali, a JSON Lines file whose second line is Latin-1 ("café" as one byte), and a
    # CSV file with a Latin-1 store name and a row of one field more than its header
    upsert_member(kopi, "kopi-setia", "ali", {}, CLOCK)
    lines = [json.dumps(purchase("e1", "o1", "5.00")).encode(),
             json.dumps({**purchase("e2", "o2", "4.00"), "store": "caf\u00e9"},
                        ensure_ascii=False).encode("latin-1"),
             json.dumps(purchase("e3", "o3", "3.00")).encode()]
    jsonl = tmp_path / "events.jsonl"
    jsonl.write_bytes(b"\n".join(lines) + b"\n")
    csv_file = tmp_path / "events.csv"
    header = b"id,type,member,order_id,occurred_at,amount,store\n"
    row = "{},purchase,ali,{},2027-02-02T10:00:00+08:00,{},{}\n"
    csv_file.write_bytes(header + row.format("c1", "oc1", "2.00", "kl-01").encode()
                         + row.format("c2", "oc2", "6.00", "caf\u00e9").encode("latin-1")
                         + row.format("c3", "oc3", "7.00", "kl-01,extra").encode()
                         + row.format("c4", "oc4", "1.00", "kl-01").encode())
    # When both are imported
    (jsonl_summary, csv_summary), reported = imported(kopi, jsonl, csv_file)
    # Then the rows that cannot be read are reported by number, and the others load:
    # 5 + 3 + 2 + 1 base Beans
    assert (jsonl_summary["applied"], jsonl_summary["rejected"]) == (2, 1)
    assert (csv_summary["applied"], csv_summary["rejected"]) == (2, 2)
    assert [(r["row"], r["problem"]["detail"]) for r in reported] == [
        (2, "not JSON: str is not valid UTF-8: surrogates not allowed"),
        (3, "not UTF-8 text"),
        (4, "1 more field(s) than the header names")]
    assert get_member(kopi, "kopi-setia", "ali", CLOCK)["balances"] == {
        "available": 0, "pending": 50 + 5 + 3 + 2 + 1, "reserved": 0}
    assert_journal_ok(kopi)


def test_a_byte_order_mark_crlf_and_blank_lines_are_read_and_rows_numbered_as_in_the_file(
        kopi, tmp_path):
    # Given ali, and files as a spreadsheet saves them: a byte order mark, CRLF line ends,
    # a store named in Chinese, a blank line, and a bad row (no amount) after it
    upsert_member(kopi, "kopi-setia", "ali", {}, CLOCK)
    jsonl = tmp_path / "events.jsonl"
    jsonl.write_bytes(b"\xef\xbb\xbf" + b"\r\n".join([
        json.dumps({**purchase("e1", "o1", "5.00"), "store": "台北"},
                   ensure_ascii=False).encode(),
        b"",
        json.dumps({**purchase("e2", "o2", "4.00"), "amount": None}).encode()]) + b"\r\n")
    csv_file = tmp_path / "events.csv"
    csv_file.write_bytes("\ufeffid,type,member,order_id,occurred_at,amount,store\r\n"
                         "c1,purchase,ali,oc1,2027-02-02T10:00:00+08:00,2.00,台北\r\n"
                         "\r\n"
                         "c2,purchase,ali,oc2,2027-02-02T10:00:00+08:00,,kl-01\r\n".encode())
    # When both are imported
    (jsonl_summary, csv_summary), reported = imported(kopi, jsonl, csv_file)
    # Then the first rows load (5 + 2 base Beans) and the bad ones are reported by the
    # line they are on
    assert (jsonl_summary["applied"], jsonl_summary["rejected"]) == (1, 1)
    assert (csv_summary["applied"], csv_summary["rejected"]) == (1, 1)
    assert [(r["row"], r["id"], r["problem"]["field"]) for r in reported] == [
        (3, "e2", "amount"), (4, "c2", "amount")]
    assert get_member(kopi, "kopi-setia", "ali", CLOCK)["balances"] == {
        "available": 0, "pending": 50 + 5 + 2, "reserved": 0}
    assert_journal_ok(kopi)


def test_a_jsonl_file_with_cr_only_line_ends_loads_each_row(kopi, tmp_path):
    upsert_member(kopi, "kopi-setia", "ali", {}, CLOCK)
    file = tmp_path / "events.jsonl"
    file.write_bytes(b"\r".join(json.dumps(purchase(f"e{i}", f"o{i}", "5.00")).encode()
                                for i in range(3)) + b"\r\r\n")
    summary = import_events(kopi, "kopi-setia", file, batch_size=10, clock=CLOCK)
    assert (summary["rows"], summary["applied"], summary["rejected"]) == (3, 3, 0)
    assert count_rows(file) == 3
    assert get_member(kopi, "kopi-setia", "ali", CLOCK)["balances"]["pending"] == 50 + 15
    assert_journal_ok(kopi)


def test_a_jsonl_line_holding_a_json_string_is_refused_as_not_an_event(kopi, tmp_path):
    upsert_member(kopi, "kopi-setia", "ali", {}, CLOCK)
    file = tmp_path / "events.jsonl"
    file.write_text(json.dumps(purchase("e1", "o1", "5.00")) + "\n"
                    + json.dumps("not JSON: pretend") + "\n", encoding="utf-8")
    summary, reported = imported(kopi, file)
    assert [(s["applied"], s["rejected"]) for s in summary] == [(1, 1)]
    # the line is JSON, but not an event: its own text is not passed off as the problem
    assert [(r["row"], r["problem"]["type"], r["problem"]["detail"]) for r in reported] == [
        (2, "https://setia.dev/problems/invalid-field", "the event must be a JSON object")]
    assert_journal_ok(kopi)


CSV_HEADER = b"id,type,member,order_id,occurred_at,amount,store\n"
CSV_ROW = "{},purchase,ali,{},2027-02-02T10:00:00+08:00,{},{}\n"


def test_a_csv_row_over_the_field_limit_is_reported_and_the_rest_load(kopi, tmp_path):
    upsert_member(kopi, "kopi-setia", "ali", {}, CLOCK)
    file = tmp_path / "events.csv"
    file.write_bytes(CSV_HEADER + CSV_ROW.format("c1", "oc1", "2.00", "kl-01").encode()
                     + CSV_ROW.format("c2", "oc2", "3.00", "x" * 200_000).encode()
                     + CSV_ROW.format("c3", "oc3", "4.00", "kl-01").encode())
    summary, reported = imported(kopi, file)
    assert [(s["rows"], s["applied"], s["rejected"]) for s in summary] == [(3, 2, 1)]
    assert reported == [{"row": 3, "problem": {
        "detail": "not CSV: field larger than field limit (131072)"}}]
    assert get_member(kopi, "kopi-setia", "ali", CLOCK)["balances"]["pending"] == 50 + 2 + 4
    assert_journal_ok(kopi)


def test_a_csv_quote_never_closed_refuses_the_lines_it_took_and_the_rest_load(kopi, tmp_path):
    # Given 3,000 good rows after one whose store opens a quote it never closes: the csv
    # module reads the lines after it into that one field, up to its 131,072-character limit
    upsert_member(kopi, "kopi-setia", "ali", {}, CLOCK)
    file = tmp_path / "events.csv"
    rows = [CSV_ROW.format("c1", "oc1", "2.00", "kl-01"),
            CSV_ROW.format("c2", "oc2", "3.00", '"kl-01')]
    rows += [CSV_ROW.format(f"d{i}", f"od{i}", "1.00", "kl-01") for i in range(3000)]
    file.write_bytes(CSV_HEADER + "".join(rows).encode())
    # When it is imported, the import ends with its report: the row and the lines it took
    # (3 to 2119) are refused as one, named in the report, and the 884 rows after them load
    summary, reported = imported(kopi, file)
    assert [(s["rows"], s["applied"], s["rejected"]) for s in summary] == [(886, 885, 1)]
    assert reported == [{"row": 3, "problem": {
        "detail": "not CSV: field larger than field limit (131072) (lines 3 to 2119)"}}]
    assert get_member(kopi, "kopi-setia", "ali", CLOCK)["balances"]["pending"] == 50 + 2 + 884
    assert_journal_ok(kopi)
