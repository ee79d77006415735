"""Member tokens: issue, authenticate, expire, revoke; each admin step audited."""

from __future__ import annotations

import pytest

from setia.domain.errors import InvalidField, UnknownMember
from setia.domain.trust import UnknownToken
from setia.service import audit, member_tokens
from setia.service.members import upsert_member
from tests.conftest import assert_journal_ok, fixed_clock

P = "kopi-setia"
CLOCK = fixed_clock("2027-03-01T09:00:00+08:00")


def test_a_token_stands_for_its_member_until_it_expires_or_is_revoked(kopi):
    upsert_member(kopi, P, "cust-1", {}, CLOCK)
    issued = member_tokens.issue(kopi, P, "cust-1", days=2, clock=CLOCK)
    assert issued["expires_at"] == "2027-03-03T09:00:00+08:00"
    token = str(issued["token"])

    principal = member_tokens.authenticate(kopi, token, CLOCK)
    assert principal is not None and principal.program_id == P
    assert member_tokens.member_id(kopi, principal) == "cust-1"
    # a wrong secret with the right id, and the token after it expired, are refused
    assert member_tokens.authenticate(kopi, token[:-2] + "xx", CLOCK) is None
    assert member_tokens.authenticate(kopi, token,
                                      fixed_clock("2027-03-03T09:00:01+08:00")) is None

    member_tokens.revoke(kopi, P, str(issued["token_id"]), CLOCK)
    member_tokens._cache.clear()  # another process's view: no cached check
    assert member_tokens.authenticate(kopi, token, CLOCK) is None
    with pytest.raises(UnknownToken):
        member_tokens.revoke(kopi, P, str(issued["token_id"]), CLOCK)
    assert [r["action"] for r in audit.entries(kopi, P)][-2:] == [
        "member_token.issue", "member_token.revoke"]
    assert_journal_ok(kopi)


def test_tokens_for_unknown_members_or_bad_lifetimes_are_refused(kopi):
    upsert_member(kopi, P, "cust-1", {}, CLOCK)
    with pytest.raises(UnknownMember):
        member_tokens.issue(kopi, P, "nobody", clock=CLOCK)
    for days in (0, 366, True, "7"):
        with pytest.raises(InvalidField) as refused:
            member_tokens.issue(kopi, P, "cust-1", days=days, clock=CLOCK)  # type: ignore[arg-type]
        assert refused.value.field == "days"
    assert [r["action"] for r in audit.entries(kopi, P)] == ["programme.store"]
