"""Privacy: export a member's data, erase (pseudonymise) a member, event retention."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from setia.adapters.db import tables
from setia.domain.engagement import in_holdout
from setia.domain.errors import UnknownMember
from setia.domain.trust import EventTooOld
from setia.service import (
    audit,
    coupons,
    deliveries,
    member_tokens,
    memberships,
    privacy,
    referrals,
    reversals,
    staff,
    surveys,
)
from setia.service.check import check
from setia.service.events import ingest_event
from setia.service.members import get_member, upsert_member
from setia.service.programmes import parse_text
from setia.service.redemptions import adjust, redeem, use_voucher
from tests.conftest import (
    KOPI_SETIA,
    assert_journal_ok,
    at,
    fixed_clock,
    load_programme,
    wait_for_lock_waiters,
)

P = "kopi-setia"
CLOCK = fixed_clock("2027-03-01T09:00:00+08:00")
PROFILE = {"name": "Siti Aminah", "email": "siti@example.my", "phone": "+60 12-345 6789",
           "birthday": "1990-05-17", "attributes": {"city": "Penang"}}


def purchase(event_id: str, member: str = "cust-1") -> dict:
    return {"id": event_id, "type": "purchase", "member": member, "order_id": f"o-{event_id}",
            "occurred_at": "2027-03-02T10:00:00+08:00", "amount": "42.50", "currency": "MYR",
            "store": "kl-01"}


def totals(engine: sa.Engine) -> list[tuple]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(
            "SELECT debit, credit, sum(points), count(*) FROM postings "
            "GROUP BY debit, credit ORDER BY debit, credit"))]


def test_export_holds_the_profile_journal_events_and_orders_as_json(kopi):
    upsert_member(kopi, P, "cust-1", PROFILE, CLOCK)
    ingest_event(kopi, P, purchase("e1"), CLOCK)

    data = privacy.export_member(kopi, P, "cust-1", CLOCK)

    json.dumps(data)  # JSON-ready throughout
    assert data["member"]["email"] == "siti@example.my"
    assert data["member"]["balances"] == {"available": 0, "pending": 50 + 142, "reserved": 0}
    assert [(p["code"], p["points"], p["ref"], p["rule_id"]) for p in data["journal"]] == [
        ("earn", 50, "signup:cust-1", "welcome"), ("earn", 42, "e1", "base"),
        ("earn", 100, "e1", "first-visit")]
    assert [e["id"] for e in data["events"] if e["type"] == "purchase"] == ["e1"]
    assert [o["order_id"] for o in data["orders"]] == ["o-e1"]
    assert [(lot["seq"], lot["points"]) for lot in data["lots"]] == [(1, 50), (2, 142)]
    (row,) = [e for e in audit.entries(kopi, P) if e["action"] == "member.export"]
    assert row["target"].startswith("member #")


def test_erasure_pseudonymises_the_member_and_keeps_the_journal_totals(kopi):
    # Given a member with a profile, a purchase and a portal token
    upsert_member(kopi, P, "cust-1", PROFILE, CLOCK)
    upsert_member(kopi, P, "cust-2", {"name": "Other"}, CLOCK)
    ingest_event(kopi, P, purchase("e1"), CLOCK)
    token = member_tokens.issue(kopi, P, "cust-1", clock=CLOCK)["token"]
    before = totals(kopi)

    # When the member is erased
    result = privacy.erase_member(kopi, P, "cust-1", "erase-1", CLOCK)

    # Then the profile is gone, the id is a pseudonym, balances and totals are unchanged
    pseudonym = result["member"]
    assert pseudonym.startswith("erased-") and len(pseudonym) == len("erased-") + 16
    assert result["cleared"] == ["name", "email", "phone", "birthday", "attributes"]
    view = get_member(kopi, P, pseudonym, CLOCK)
    assert (view["name"], view["email"], view["phone"], view["birthday"],
            view["attributes"]) == (None, None, None, None, {})
    assert view["balances"] == {"available": 0, "pending": 192, "reserved": 0}
    with pytest.raises(UnknownMember):
        get_member(kopi, P, "cust-1", CLOCK)
    assert totals(kopi) == before
    assert check(kopi).problems == []
    # no trace of the person in members, events or orders
    with kopi.connect() as conn:
        dump = json.dumps([
            [list(r) for r in conn.execute(sa.text(f"SELECT * FROM {table}"))]
            for table in ("members", "events", "orders", "audit_log")], default=str)
    for personal in ("Siti", "siti@example.my", "345 6789", "1990-05-17", "Penang"):
        assert personal not in dump
    with kopi.connect() as conn:
        # the member id is relabelled wherever it names the member (system event ids such
        # as signup:cust-1 stay, as the journal's references do: docs/privacy.md)
        assert conn.execute(sa.text("SELECT count(*) FROM members WHERE id = 'cust-1'")
                            ).scalar_one() == 0
        assert sorted(conn.execute(sa.text("SELECT DISTINCT member_id FROM events")).scalars()) \
            == ["cust-2", pseudonym]
        # her messages too (keys stay, as event ids do): who they name, in column and data
        messages = [(row[0], row[1], json.loads(row[2])["member"]) for row in conn.execute(
            sa.text("SELECT type, member_id, data FROM outbox ORDER BY id"))]
        assert messages == [("points.earned", pseudonym, pseudonym),  # the signup's
                            ("member.enrolled", pseudonym, pseudonym),
                            ("points.earned", "cust-2", "cust-2"),
                            ("member.enrolled", "cust-2", "cust-2"),
                            ("points.earned", pseudonym, pseudonym)]  # e1's
    # the portal token stops working; the same key replays; another member is untouched
    member_tokens._cache.clear()
    assert member_tokens.authenticate(kopi, token, CLOCK) is None
    assert privacy.erase_member(kopi, P, "cust-1", "erase-1", CLOCK) == result
    assert get_member(kopi, P, "cust-2", CLOCK)["name"] == "Other"
    (row,) = [e for e in audit.entries(kopi, P) if e["action"] == "member.erase"]
    assert row["after"] == {"id": pseudonym}
    assert_journal_ok(kopi)


def test_erasing_an_unknown_member_is_refused_and_changes_nothing(kopi):
    upsert_member(kopi, P, "cust-1", PROFILE, CLOCK)
    before = totals(kopi)
    with pytest.raises(UnknownMember):
        privacy.erase_member(kopi, P, "nobody", "erase-x", CLOCK)
    assert get_member(kopi, P, "cust-1", CLOCK)["name"] == "Siti Aminah"
    assert totals(kopi) == before
    assert_journal_ok(kopi)


def retained(engine: sa.Engine, months: int) -> None:
    document = parse_text(KOPI_SETIA.read_text())
    document["privacy"] = {"event_retention_months": months}
    load_programme(engine, document)


def test_events_older_than_the_retention_are_refused_and_pruned(kopi):
    upsert_member(kopi, P, "cust-1", {}, CLOCK)
    ingest_event(kopi, P, purchase("e1"), CLOCK)  # 2027-03-02
    retained(kopi, 6)
    later = fixed_clock("2027-10-01T09:00:00+08:00")
    journal_before = totals(kopi)

    # an event from before 2027-04-01 (6 months before the clock) is refused
    with pytest.raises(EventTooOld) as refused:
        ingest_event(kopi, P, {**purchase("e-old"), "order_id": "o-old"}, later)
    assert refused.value.field == "occurred_at"
    assert totals(kopi) == journal_before

    # pruning deletes the stored events before the cutoff, never the journal
    deleted = privacy.prune_events(kopi, at("2027-10-01T09:00:00+08:00"))
    assert deleted == {P: 2}  # the signup and e1
    with kopi.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM events")).scalar_one() == 0
    assert totals(kopi) == journal_before
    assert_journal_ok(kopi)


def test_an_erased_members_unsent_messages_do_not_reach_her_when_her_id_enrols_again(kopi):
    # Given a member with an email address, welcomed (messages not yet made into
    # deliveries: her welcome, the signup's points and the purchase's), then erased
    upsert_member(kopi, P, "cust-1", PROFILE, CLOCK)
    ingest_event(kopi, P, purchase("e1"), CLOCK)
    pseudonym = privacy.erase_member(kopi, P, "cust-1", "erase-1", CLOCK)["member"]

    # When the same id enrols again with a new address, and the outbox is dispatched
    later = fixed_clock("2027-03-05T09:00:00+08:00")
    upsert_member(kopi, P, "cust-1", {"email": "new@example.my"}, later)
    assert deliveries.dispatch(kopi, later()) == 4

    # Then only her new welcome is emailed: the erased account's messages name its
    # pseudonym, which has no address (they named "cust-1" and went to the new address)
    with kopi.connect() as conn:
        emailed = [tuple(row) for row in conn.execute(sa.text(
            "SELECT o.type, o.member_id, o.key FROM deliveries d "
            "JOIN outbox o ON o.id = d.outbox_id WHERE d.channel = 'email'"))]
        names = sorted((row[0], row[1]) for row in conn.execute(
            sa.text("SELECT type, member_id FROM outbox")))
    assert emailed == [("member.enrolled", "cust-1",
                        "member.enrolled:cust-1:2027-03-05T01:00:00+00:00")]
    assert names == [("member.enrolled", "cust-1"), ("member.enrolled", pseudonym),
                     ("points.earned", pseudonym), ("points.earned", pseudonym)]
    assert_journal_ok(kopi)


# -- the CLI's erasure, and what erasure leaves in every table ---------------------------

def setia_cli(engine: sa.Engine, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed ``setia`` console script on this test's database (as
    tests/e2e/test_cli.py does)."""
    script = Path(sys.executable).parent / "setia"
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["SETIA_DATABASE_URL"] = engine.url.render_as_string(hide_password=False)
    return subprocess.run([str(script if script.exists() else "setia"), *args], env=env,
                          capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL, check=False)


def test_the_cli_erases_an_id_enrolled_again_after_its_first_erasure(kopi):
    # Given a member erased from the command line, whose id then enrols again
    upsert_member(kopi, P, "cust-42", PROFILE, CLOCK)
    first = setia_cli(kopi, "privacy", "erase", "cust-42", "-p", P, "--yes")
    assert first.returncode == 0, first.stderr
    upsert_member(kopi, P, "cust-42", {"name": "Siti Baru", "email": "baru@example.my"},
                  fixed_clock("2027-04-01T09:00:00+08:00"))

    # When the operator runs the same command again
    second = setia_cli(kopi, "privacy", "erase", "cust-42", "-p", P, "--yes")

    # Then the new member is erased too: two pseudonymous rows, no profile left, and no
    # stored idempotency key names the id
    assert second.returncode == 0, second.stderr
    with kopi.connect() as conn:
        members = [tuple(row) for row in conn.execute(sa.text(
            "SELECT id, name, email FROM members ORDER BY pk"))]
        keys = list(conn.execute(sa.text(
            "SELECT key FROM commands WHERE operation = 'member.erase'")).scalars())
    pseudonyms = [row[0] for row in members]
    assert len(members) == 2 and len(set(pseudonyms)) == 2
    assert [(name, email) for _, name, email in members] == [(None, None), (None, None)]
    assert all(pseudonym.startswith("erased-") for pseudonym in pseudonyms)
    assert first.stdout.split()[3] == pseudonyms[0]  # "member erased; now <pseudonym> ..."
    assert second.stdout.split()[3] == pseudonyms[1]
    assert len(keys) == 2 and not any("cust-42" in key for key in keys)
    # an explicit --key makes a retried run answer the first result, erasing nothing more
    upsert_member(kopi, P, "cust-43", PROFILE, CLOCK)
    keyed = setia_cli(kopi, "privacy", "erase", "cust-43", "-p", P, "--yes", "--key", "t-1")
    again = setia_cli(kopi, "privacy", "erase", "cust-43", "-p", P, "--yes", "--key", "t-1")
    assert (keyed.returncode, again.returncode) == (0, 0)
    assert again.stdout == keyed.stdout
    assert_journal_ok(kopi)


def test_an_erasure_removes_the_key_the_cli_used_to_store_under_the_member_id(kopi):
    # Given a member erased by an older CLI (its key named the id), enrolled again
    upsert_member(kopi, P, "cust-44", PROFILE, CLOCK)
    first = privacy.erase_member(kopi, P, "cust-44", "cli:erase:cust-44", CLOCK)["member"]
    upsert_member(kopi, P, "cust-44", {"name": "Siti Baru"},
                  fixed_clock("2027-04-01T09:00:00+08:00"))

    # When she is erased again
    second = privacy.erase_member(kopi, P, "cust-44", "k-erase-2", CLOCK)["member"]

    # Then the old key is gone with her id; the new one names no one
    with kopi.connect() as conn:
        keys = list(conn.execute(sa.text("SELECT key FROM commands")).scalars())
        ids = sorted(conn.execute(sa.text("SELECT id FROM members")).scalars())
    assert keys == ["k-erase-2"]
    assert ids == sorted([first, second])
    assert_journal_ok(kopi)


HER = "cust-31"  # held out of the campaign hari-raya-2028 (10%, by a hash of her id)
COMMENT = "the kaya toast was cold, call me"
IP = "203.0.113.77"
WEB = "2028-03-01T09:00:00+08:00"


def stored_text(engine: sa.Engine) -> dict[str, list[str]]:
    """Every text and JSON value of every table of the metadata, by ``table.column``."""
    found: dict[str, list[str]] = {}
    with engine.connect() as conn:
        for table in tables.metadata.sorted_tables:
            columns = [column for column in table.columns
                       if isinstance(getattr(column.type, "impl_instance", column.type),
                                     sa.String | sa.JSON)]
            if not columns:
                continue
            for row in conn.execute(sa.select(*columns)):
                for column, value in zip(columns, row, strict=True):
                    if value is not None:
                        found.setdefault(f"{table.name}.{column.name}", []).append(
                            value if isinstance(value, str)
                            else json.dumps(value, ensure_ascii=False))
    return found


def traces(engine: sa.Engine, member_id: str, needles: list[str]) -> list[tuple[str, str]]:
    """(table.column, needle) wherever a needle is stored. The references docs/privacy.md
    says stay are left out first: ids the engine made from the member id (the signup's
    event id, in the journal, events and message keys) and outbox message keys."""
    made = re.compile(rf"(signup|birthday|anniversary):{re.escape(member_id)}(?![\w-])")
    key = re.compile(rf"^[a-z_.]+:{re.escape(member_id)}:")
    hits = set()
    for column, values in stored_text(engine).items():
        for value in values:
            left = made.sub("", value)
            if column == "outbox.key":
                left = key.sub("", left)
            hits.update((column, needle) for needle in needles if needle in left)
    return sorted(hits)


def test_erasure_leaves_no_trace_of_her_in_any_table(kopi):
    # Given a member who was referred from an IP, used a coupon, answered a survey in
    # free text, bought a membership, was held out of a campaign, chose a language, asked
    # for two sign-in links and signed in with one (her session unexpired)
    assert in_holdout(P, "hari-raya-2028", HER, Decimal("0.1"))
    upsert_member(kopi, P, "cust-2", {"name": "Other"}, CLOCK)
    upsert_member(kopi, P, HER, {**PROFILE, "attributes": {"street": "Jalan Sultan"}}, CLOCK)
    code = referrals.code_for(kopi, P, "cust-2", CLOCK)["code"]
    referrals.link(kopi, P, {"code": code, "member": HER, "ip": IP}, "k-ref", CLOCK)
    day2 = fixed_clock("2027-03-02T10:00:00+08:00")
    coupons.redeem(kopi, P, {"code": "WELCOME10", "member": HER, "amount": "42.50",
                             "order_id": "o-e1"}, "k-coupon", day2)
    ingest_event(kopi, P, purchase("e1", HER), day2)
    surveys.submit(kopi, P, "visit", {"member": HER, "answers": {
        "recommend": 9, "taste": 4, "comment": COMMENT}}, "k-survey",
        fixed_clock("2027-03-03T10:00:00+08:00"))
    memberships.buy(kopi, P, HER, {"plan": "kopi-plus"}, "k-plus",
                    fixed_clock("2027-03-04T10:00:00+08:00"))
    ingest_event(kopi, P, {**purchase("e2", HER), "order_id": "o-e2",
                           "occurred_at": "2028-02-27T10:00:00+08:00"},
                 fixed_clock("2028-02-27T10:00:00+08:00"))
    staff.set_member_locale(kopi, P, HER, "ms")
    # and was given 30 points by an admin, reversed (the audit log keeps both)
    adjust(kopi, P, {"member": HER, "points": 30, "reason": "goodwill"}, "k-adj", day2)
    reversals.reverse(kopi, P, {"ref": "adjust:k-adj", "reason": "entered twice"}, "k-rev",
                      day2)
    linked = staff.request_link(kopi, P, "Siti@example.my", fixed_clock(WEB))
    assert linked is not None and linked[0] == HER
    cookie, _ = staff.use_link(kopi, P, linked[1], fixed_clock(WEB))
    assert staff.request_link(kopi, P, "siti@example.my", fixed_clock(WEB)) is not None
    # her emails were made into deliveries, and the mail server refused one of them
    assert deliveries.dispatch(kopi, at(WEB)) > 0
    with kopi.begin() as conn:
        refused = conn.execute(sa.text(
            "UPDATE deliveries SET last_error = '550 5.1.1 <siti@example.my>: mailbox "
            "unavailable' WHERE channel = 'email'")).rowcount
    assert refused > 0
    needles = [HER, "Siti", "Aminah", "siti@example.my", "345 6789", "1990-05-17",
               "Jalan Sultan", IP, COMMENT]
    assert {column.split(".")[0] for column, _ in traces(kopi, HER, needles)} >= {
        "members", "coupon_uses", "survey_responses", "membership_purchases",
        "campaign_holdouts", "member_locales", "signin_links", "web_sessions", "referrals",
        "login_failures", "commands", "deliveries"}
    # her export holds all of it
    data = privacy.export_member(kopi, P, HER, fixed_clock(WEB))
    json.dumps(data)
    assert [(u["coupon_id"], u["order_id"], u["discount"]) for u in data["coupon_uses"]] == [
        ("welcome10", "o-e1", "4.2500")]
    assert [r["answers"] for r in data["survey_responses"]] == [
        {"recommend": 9, "taste": 4, "comment": COMMENT}]
    assert [(m["plan_id"], m["kind"], m["fee"]) for m in data["membership_purchases"]] == [
        ("kopi-plus", "buy", "49.0000")]
    assert [(r["code"], r["ip"]) for r in data["referrals"]["as_referee"]] == [(code, IP)]
    assert data["referrals"]["as_referrer"] == []
    assert [h["campaign_id"] for h in data["campaign_holdouts"]] == ["hari-raya-2028"]
    before = totals(kopi)

    # When she is erased, five minutes after signing in
    erased_at = fixed_clock("2028-03-01T09:05:00+08:00")
    pseudonym = privacy.erase_member(kopi, P, HER, "k-erase", erased_at)["member"]

    # Then no table holds her id, name, email, phone, birthday, street, IP or comment
    assert traces(kopi, HER, needles) == []
    assert staff.session_for(kopi, cookie, erased_at) is None
    # and what counts on her rows stays, under the pseudonym
    with kopi.connect() as conn:
        def rows(sql: str) -> list[tuple]:
            return [tuple(row) for row in conn.execute(sa.text(sql))]
        assert rows("SELECT coupon_id, member_id, order_id FROM coupon_uses") == [
            ("welcome10", pseudonym, "o-e1")]
        assert [(m, nps, rating, json.loads(a) if isinstance(a, str) else a, points)
                for m, nps, rating, a, points in rows(
                    "SELECT member_id, nps, rating, answers, points FROM survey_responses")
                ] == [(pseudonym, 9, 4, {"recommend": 9, "taste": 4}, 20)]
        assert rows("SELECT member, plan_id, kind, status FROM membership_purchases") == [
            (pseudonym, "kopi-plus", "buy", "active")]
        assert rows("SELECT campaign_id, member_id FROM campaign_holdouts") == [
            ("hari-raya-2028", pseudonym)]
        assert rows("SELECT code, ip, status FROM referrals") == [(code, None, "qualified")]
        assert rows("SELECT count(*) FROM member_locales") == [(0,)]
        assert rows("SELECT count(*) FROM signin_links") == [(0,)]
        assert rows("SELECT count(*) FROM web_sessions") == [(0,)]
        assert rows("SELECT count(*) FROM login_failures") == [(0,)]
        assert rows("SELECT count(*), count(last_error) FROM deliveries "
                    "WHERE channel = 'email'") == [(refused, 0)]
    assert surveys.results(kopi, P, "visit", per="year")["periods"][0]["responses"] == 1
    assert totals(kopi) == before
    assert_journal_ok(kopi)


def test_sign_in_throttle_rows_are_kept_for_two_throttle_windows(kopi):
    # Given sign-in links asked for two emails
    upsert_member(kopi, P, "cust-1", PROFILE, CLOCK)
    staff.request_link(kopi, P, "siti@example.my", fixed_clock("2027-03-01T09:00:00+08:00"))
    staff.request_link(kopi, P, "nobody@example.my", fixed_clock("2027-03-01T09:10:00+08:00"))

    # When another is asked for 30 minutes after the first (two throttle windows: a
    # server whose clock runs behind still counts a row a whole window old)
    staff.request_link(kopi, P, "other@example.my", fixed_clock("2027-03-01T09:30:00+08:00"))

    # Then the first row is gone; the others are kept
    with kopi.connect() as conn:
        assert sorted(conn.execute(sa.text("SELECT key FROM login_failures")).scalars()) == [
            f"link:{P}:nobody@example.my", f"link:{P}:other@example.my"]
    assert_journal_ok(kopi)


@pytest.mark.postgres
def test_a_voucher_used_while_its_member_is_erased_names_her_pseudonym(pg_engine):
    # Given a member with a voucher, and an erasure of her that has locked her row and
    # not yet committed (another connection)
    engine = pg_engine
    load_programme(engine, KOPI_SETIA)
    upsert_member(engine, P, "cust-1", PROFILE, CLOCK)
    adjust(engine, P, {"member": "cust-1", "points": 200, "reason": "goodwill"}, "k-1", CLOCK)
    code = redeem(engine, P, {"member": "cust-1", "reward": "free-latte"}, "k-2",
                  CLOCK)["voucher"]["code"]
    eraser = engine.connect()
    eraser.begin()
    pk = eraser.execute(sa.text("SELECT pk FROM members WHERE id = 'cust-1' FOR UPDATE")
                        ).scalar_one()

    # When the till uses the voucher meanwhile, and the erasure renames her and commits
    with ThreadPoolExecutor(1) as pool:
        used = pool.submit(use_voucher, engine, P, code, "k-3", {}, CLOCK)
        # until the voucher's message waits for her row's lock
        waiting = wait_for_lock_waiters(engine, statement_like="%FOR SHARE%",
                                        seconds=10)
        eraser.execute(sa.text("UPDATE members SET id = 'erased-0000000000000000', "
                               "email = NULL WHERE pk = :pk"), {"pk": pk})
        eraser.commit()
        eraser.close()
        used.result(timeout=30)

    # Then the voucher.used message names her pseudonym, never her id
    assert waiting == 1
    with engine.connect() as conn:
        member_id, data = conn.execute(sa.text(
            "SELECT member_id, data FROM outbox WHERE type = 'voucher.used'")).one()
    assert (member_id, json.loads(data)["member"]) == ("erased-0000000000000000",) * 2
    assert_journal_ok(engine)
