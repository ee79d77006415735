"""What an erasure changes in a stored command result (service/privacy.py): the fields
that name the member and the personal fields of what is about her; nothing else."""

from __future__ import annotations

from setia.service.privacy import _names, _scrubbed

PSEUDONYM = "erased-4f1c"


def test_only_fields_that_name_her_change_not_values_that_equal_her_id():
    # Given member "1001" erased, and another member's coupon use on order "1001"
    use = {"id": "cpu_1", "member": "ali", "order_id": "1001", "code": "WELCOME"}
    # Then that result neither names her nor changes
    assert not _names(use, "1001")
    assert _scrubbed(use, "1001", PSEUDONYM) == use


def test_her_fields_are_relabelled_and_her_personal_fields_cleared():
    mine = {"member": "1001", "order_id": "1001", "name": "Siti", "reason": "Siti"}
    assert _names(mine, "1001")
    assert _scrubbed(mine, "1001", PSEUDONYM) == {
        "member": PSEUDONYM, "order_id": "1001", "name": None, "reason": "Siti"}
    view = {"id": "1001", "enrolled_at": "2027-03-01T09:00:00+08:00", "email": "s@x.my",
            "phone": "+60123456789", "tier": {"id": "gold", "name": "Gold"}}
    assert _scrubbed(view, "1001", PSEUDONYM) == {
        "id": PSEUDONYM, "enrolled_at": "2027-03-01T09:00:00+08:00", "email": None,
        "phone": None, "tier": {"id": "gold", "name": "Gold"}}
    reversal = {"ref": "ev-1", "members": [{"member": "1001", "balances": {"available": 0}},
                                           {"member": "ali", "balances": {"available": 5}}],
                "by_member": {"1001": 3}}
    assert _scrubbed(reversal, "1001", PSEUDONYM) == {
        "ref": "ev-1", "members": [{"member": PSEUDONYM, "balances": {"available": 0}},
                                   {"member": "ali", "balances": {"available": 5}}],
        "by_member": {PSEUDONYM: 3}}


def test_a_referral_view_loses_the_ip_only_when_she_is_the_referee():
    view = {"id": "rfl_1", "referrer": "1001", "referee": "ali", "ip": "203.0.113.9"}
    # erasing the referrer: the IP is ali's, and stays
    assert _scrubbed(view, "1001", PSEUDONYM) == {
        "id": "rfl_1", "referrer": PSEUDONYM, "referee": "ali", "ip": "203.0.113.9"}
    # erasing the referee: the IP is hers
    assert _scrubbed(view, "ali", PSEUDONYM) == {
        "id": "rfl_1", "referrer": "1001", "referee": PSEUDONYM, "ip": None}
