"""Outbox messages from postings, the retry schedule, languages and emails."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from setia.domain import notifications as n
from setia.domain.ledger import Posting

BAL = {"available": 10, "pending": 0, "reserved": 0}


def test_earn_postings_of_one_event_make_one_points_earned_message_with_their_sum():
    postings = [Posting("earn", "issued", "available", 20, "base"),
                Posting("earn", "issued", "available", 100, "first-visit")]
    [message] = n.from_postings(postings, member_id="m-1", ref="ev-1", balances=BAL)
    assert message == n.Message("points.earned", "points.earned:m-1:ev-1",
                                {"member": "m-1", "ref": "ev-1", "points": 120, "balances": BAL})


def test_a_hold_tells_nothing_and_its_capture_is_a_redemption():
    assert n.from_postings([Posting("hold", "available", "reserved", 150)],
                           member_id="m", ref="r", balances=BAL) == []
    [captured] = n.from_postings([Posting("capture", "reserved", "redeemed", 150)],
                                 member_id="m", ref="r", balances=BAL)
    assert (captured.type, captured.data["points"]) == ("points.redeemed", 150)


def test_adjustments_keep_their_sign_and_expiry_and_clawback_are_positive_amounts():
    messages = n.from_postings([Posting("adjust", "available", "adjustments", 7),
                                Posting("expire", "available", "expired", 30),
                                Posting("clawback", "available", "issued", 4)],
                               member_id="m", ref="r", balances=BAL)
    assert [(m.type, m.data["points"]) for m in messages] == [
        ("points.adjusted", -7), ("points.expired", 30), ("points.clawed_back", 4)]


def test_tier_change_says_up_or_down_by_position_in_the_ladder():
    names = {"member": "Member", "gold": "Gold"}
    up = n.tier_changed("m", "ev", ("member", 0), ("gold", 1), names)
    down = n.tier_changed("m", "review:2028", ("gold", 1), ("member", 0), names)
    assert (up.data["direction"], up.data["to_name"], up.key) == ("up", "Gold",
                                                                  "tier.changed:m:ev")
    assert (down.data["direction"], down.data["from"]) == ("down", "gold")


def test_retries_double_from_30_seconds_to_2_hours_and_stop_after_24_hours():
    start = datetime(2027, 3, 1, tzinfo=UTC)
    moment, waits, attempts = start, [], 0
    while True:
        attempts += 1
        following = n.next_attempt(attempts, moment, start)
        if following is None:
            break
        waits.append(int((following - moment).total_seconds()))
        moment = following
    assert waits[:10] == [30, 60, 120, 240, 480, 960, 1920, 3840, 7200, 7200]
    assert set(waits[8:]) == {7200}
    # attempt 19 fails at 79,650 s; a wait of 7,200 s would pass 86,400 s: dead
    assert attempts == 19
    assert (moment - start) == timedelta(seconds=79_650)


def test_language_is_the_members_then_the_programmes_then_english():
    assert n.language_for(["zh-TW", "ms"]) == "zh_Hant"
    assert n.language_for(["zh_Hant_HK"]) == "zh_Hant"
    assert n.language_for(["zh-CN", "id"]) == "id"  # no simplified Chinese templates
    assert n.language_for([None, "ms_MY"]) == "ms"
    assert n.language_for(["fr", "xx-??"]) == "en"


def test_tier_up_email_in_malay_names_the_tier_and_programme():
    email = n.render_email("tier.changed", {"direction": "up", "to_name": "Gold"},
                           language="ms", name="Aisyah", programme_name="Kopi Setia",
                           points_name="Beans", timezone=ZoneInfo("Asia/Kuala_Lumpur"))
    assert email == n.Email("Anda kini Gold",
                            "Helo Aisyah,\n\nTahniah: anda kini Gold dalam Kopi Setia.\n", "ms")


def test_expiring_email_in_traditional_chinese_gives_the_local_date():
    email = n.render_email("points.expiring",
                           {"points": 1200, "expires_at": "2027-07-31T20:00:00+00:00"},
                           language="zh_Hant", name="林", programme_name="茶",
                           points_name="點", timezone=ZoneInfo("Asia/Taipei"))
    assert email is not None
    assert email.subject == "1,200 點將於 2027年8月1日 到期"


def test_types_without_an_email_render_none():
    assert n.render_email("points.earned", {}, language="en", name=None, programme_name="P",
                          points_name="Beans", timezone=UTC) is None


def test_message_keys_read_one_way_only_and_fit_the_outbox_column():
    earned = [Posting("earn", "issued", "available", 5, "base")]

    def key(member_id: str, ref: str) -> str:
        [message] = n.from_postings(earned, member_id=member_id, ref=ref, balances=BAL)
        return message.key

    # Member ids without ":" keep the plain key (rows written before keep matching).
    assert key("m-1", "ev:1") == "points.earned:m-1:ev:1"
    # "a:b" about "c" and "a" about "b:c" joined plainly would be one key, and the second
    # change would be skipped as a repeat of the first.
    assert key("a:b", "c") == ("points.earned:#"
                               "af48efebd01d334bf450f00585e3acd62f5c85e2b5478aafee628e55c6732362")
    assert key("a", "b:c") == "points.earned:a:b:c"
    # A key longer than the column would be cut, and two long refs alike in their first
    # 300 characters would meet.
    long_a, long_b = "e" * 200 + "-a", "e" * 200 + "-b"
    keys = {key("m" * 128, long_a), key("m" * 128, long_b)}
    assert len(keys) == 2 and all(k.startswith("points.earned:#") and len(k) == 79
                                  for k in keys)
    tier = n.tier_changed("a:b", "c", ("member", 0), ("gold", 1), {})
    assert tier.key == n.message_key("tier.changed", "a:b", "c") != "tier.changed:a:b:c"
