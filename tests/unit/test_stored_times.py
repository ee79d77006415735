"""How the unit of work stores times: each distinct instant converted once, as naive UTC
text, whatever zone it came in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace
from zoneinfo import ZoneInfo

from setia.adapters.db.store import _Times, _utc_text


def counting() -> tuple[_Times, list[datetime]]:
    seen: list[datetime] = []

    def convert(value: datetime) -> str:
        seen.append(value)
        return _utc_text(value)

    return _Times(SimpleNamespace(ts=convert)), seen  # type: ignore[arg-type]


def test_one_instant_in_several_zones_is_converted_once() -> None:
    times, seen = counting()
    kl = datetime(2027, 3, 2, 10, 0, tzinfo=timezone(timedelta(hours=8)))
    same = [kl, kl.astimezone(UTC), kl.astimezone(ZoneInfo("Asia/Taipei")),
            datetime(2027, 3, 2, 10, 0, tzinfo=timezone(timedelta(hours=8)))]
    assert [times(value) for value in same] == ["2027-03-02 02:00:00.000000"] * 4
    assert seen == [kl]
    assert times(None) is None


def test_the_repeated_hour_of_a_clock_change_keeps_its_two_instants() -> None:
    # 01:30 on 31 October 2027 happens twice in London: at 00:30 and at 01:30 UTC. The two
    # compare equal (same zone: wall clock, fold ignored), yet are stored apart.
    times, seen = counting()
    first = datetime(2027, 10, 31, 1, 30, tzinfo=ZoneInfo("Europe/London"))
    second = first.replace(fold=1)
    assert first == second
    assert [times(first), times(second), times(first), times(second)] == [
        "2027-10-31 00:30:00.000000", "2027-10-31 01:30:00.000000",
        "2027-10-31 00:30:00.000000", "2027-10-31 01:30:00.000000"]
    assert seen == [first, second, second]
