from tests.conftest import assert_journal_ok, fixed_clock

from setia.service.events import ingest_event
from setia.service.members import upsert_member


def test_a_purchase_earns_and_the_journal_balances(kopi):
    clock = fixed_clock("2027-03-01T09:00:00+08:00")
    upsert_member(kopi, "kopi-setia", "cust-1", {"name": "Mei"}, clock)
    result = ingest_event(kopi, "kopi-setia", {
        "id": "e1", "type": "purchase", "member": "cust-1", "order_id": "o1",
        "occurred_at": "2027-03-02T10:00:00+08:00", "amount": "12.30"}, clock)
    assert result["points"] == 12 + 100
    assert result["balances"] == {"available": 0, "pending": 50 + 112, "reserved": 0}
    assert_journal_ok(kopi)
