"""The fraud and privacy sections of a programme file, and the pure fraud decision."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from setia.domain.errors import InvalidProgramme
from setia.domain.ledger import AVAILABLE, PENDING, UNDER_REVIEW, MemberLedger
from setia.domain.programme import validate_document
from setia.domain.trust import DuplicateReceipts, FraudConfig, Recent, Velocity, reasons

BASE = {"id": "shop", "name": "Shop", "currency": "MYR"}
NONE_BEFORE = Recent(events={"hour": 0, "day": 0}, points={"hour": 0, "day": 0}, duplicates=0)


def test_the_sections_are_optional_and_validated_with_their_path():
    assert validate_document(BASE).fraud is None
    model = validate_document({**BASE, "fraud": {"velocity": [{"per": "hour", "max_events": 3}]},
                               "privacy": {"event_retention_months": 24}})
    assert model.fraud is not None and model.fraud.velocity[0].max_events == 3
    assert model.fraud.hold is True
    assert model.privacy is not None and model.privacy.event_retention_months == 24
    with pytest.raises(InvalidProgramme) as bad:
        validate_document({**BASE, "fraud": {"velocity": [{"per": "week", "max_events": 3}]}})
    assert bad.value.errors[0][0] == "fraud.velocity[0].per"
    with pytest.raises(InvalidProgramme) as empty:
        validate_document({**BASE, "fraud": {"velocity": [{"per": "day"}]}})
    assert "max_events or max_points" in empty.value.errors[0][1]


def test_limits_count_the_event_itself():
    config = FraudConfig(velocity=[Velocity(per="hour", max_events=2),
                                   Velocity(per="day", max_points=100)])
    at_limit = Recent(events={"hour": 1, "day": 1}, points={"hour": 40, "day": 40}, duplicates=0)
    assert reasons(config, at_limit, 60) == []
    assert reasons(config, at_limit, 61) == ["velocity: 101 points in a day (limit 100)"]
    over = Recent(events={"hour": 2, "day": 2}, points={"hour": 0, "day": 0}, duplicates=0)
    assert reasons(config, over, 1) == ["velocity: 3 earning events in an hour (limit 2)"]


def test_a_duplicate_receipt_is_a_reason_only_when_configured():
    seen = Recent(events={"hour": 0, "day": 0}, points={"hour": 0, "day": 0}, duplicates=2)
    assert reasons(FraudConfig(), seen, 10) == []
    assert reasons(FraudConfig(duplicate_receipts=DuplicateReceipts(window_minutes=5)), seen,
                   10) == ["duplicate receipt: 2 other purchase(s) with the same store and "
                           "amount within 5 minutes"]
    assert reasons(FraudConfig(), NONE_BEFORE, 10) == []


def test_suspend_and_resume_move_a_lot_between_available_and_pending():
    now = datetime(2027, 3, 1, tzinfo=UTC)
    ledger = MemberLedger(member_pk=1)
    ledger.earn(30, source="e1", rule_id="base", explanation="", available_at=now,
                pending=False, expires_at=None)
    seq = ledger.new_lots[("e1", False)]
    assert ledger.suspend(seq, "held") == 30
    assert (ledger.available, ledger.pending, ledger.lots[seq].available_at) == (
        0, 30, UNDER_REVIEW)
    ledger.check()
    assert ledger.resume(seq, now, now, "ok") == 30
    assert (ledger.available, ledger.pending) == (30, 0)
    assert [(p.code, p.debit, p.credit, p.points) for p in ledger.postings[1:]] == [
        ("review_hold", AVAILABLE, PENDING, 30), ("review_ok", PENDING, AVAILABLE, 30)]
    ledger.check()


def test_a_held_lot_that_paid_a_debt_owes_it_again_while_held():
    now = datetime(2027, 3, 1, tzinfo=UTC)
    ledger = MemberLedger(member_pk=1, available=-10)
    ledger.lots_loader = None
    ledger.earn(30, source="e1", rule_id=None, explanation="", available_at=now,
                pending=False, expires_at=None)
    seq = ledger.new_lots[("e1", False)]
    assert (ledger.available, ledger.lots[seq].remaining) == (20, 20)
    ledger.suspend(seq, "held")
    assert (ledger.available, ledger.pending, ledger.lots[seq].remaining) == (-10, 30, 30)
    ledger.check()
    ledger.resume(seq, now, now, "ok")
    assert (ledger.available, ledger.pending, ledger.lots[seq].remaining) == (20, 0, 20)
    ledger.check()


def test_erasure_relabels_only_the_message_fields_that_name_the_member() -> None:
    from types import SimpleNamespace

    from setia.service.privacy import _relabelled

    def row(row_id: int, member_id: str, **data: object) -> SimpleNamespace:
        return SimpleNamespace(id=row_id, member_id=member_id,
                               data=json.dumps({"program": "p", **data}))

    rows = [row(1, "kay", member="kay", ref="e1", points=9),
            row(2, "ann", member="ann", referral="r1", referred="kay", points=50),
            row(3, "ann", member="ann", ref="kay")]  # her id only as another value
    changes = list(_relabelled(rows, "kay", "erased-0"))
    assert [(c["row_id"], c["new_member"], json.loads(c["new_data"])) for c in changes] == [
        (1, "erased-0", {"program": "p", "member": "erased-0", "ref": "e1", "points": 9}),
        (2, "ann", {"program": "p", "member": "ann", "referral": "r1",
                    "referred": "erased-0", "points": 50})]
