"""Privacy: export a member's data, erase (pseudonymise) a member, event retention."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from setia.domain.errors import UnknownMember
from setia.domain.trust import EventTooOld
from setia.service import audit, deliveries, member_tokens, privacy
from setia.service.check import check
from setia.service.events import ingest_event
from setia.service.members import get_member, upsert_member
from setia.service.programmes import parse_text
from tests.conftest import KOPI_SETIA, assert_journal_ok, at, fixed_clock, load_programme

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
