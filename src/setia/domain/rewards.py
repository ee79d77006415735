"""Rewards and vouchers: who may redeem what, and voucher codes.

Stock is enforced by the database with one conditional update; this module
decides everything that depends only on the programme and the member.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from setia.domain.errors import (
    InvalidField,
    RewardLimitReached,
    RewardNotAvailable,
    RewardNotForTier,
    UnknownReward,
    VoucherExpired,
    VoucherUsed,
)
from setia.domain.programme import Programme, Reward

# Crockford's base 32: no I, L, O or U, so a code read aloud or typed is unambiguous.
CODE_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CODE_LENGTH = 12  # 60 bits of randomness
HOLD_MINUTES = 15


def voucher_code(random_bytes: bytes) -> str:
    """A code from 8 random bytes: 12 characters of Crockford base 32 (60 bits)."""
    assert len(random_bytes) >= 8
    number = int.from_bytes(random_bytes[:8], "big")
    chars = []
    for _ in range(CODE_LENGTH):
        chars.append(CODE_ALPHABET[number & 31])
        number >>= 5
    return "".join(chars)


def normalise_code(code: str) -> str:
    """What a cashier types: any case, with dashes or spaces; O read as 0, I and L as 1."""
    cleaned = code.strip().upper().replace("-", "").replace(" ", "")
    return cleaned.translate(str.maketrans("OIL", "011"))


def is_code(code: str) -> bool:
    """Whether a normalised code could be a voucher code at all."""
    return len(code) == CODE_LENGTH and all(char in CODE_ALPHABET for char in code)


def find_reward(programme: Programme, reward_id: Any) -> Reward:
    if not isinstance(reward_id, str) or not reward_id:
        raise InvalidField("reward must be a reward id", field="reward")
    reward = programme.reward(reward_id)
    if reward is None:
        raise UnknownReward(f"no reward {reward_id!r} in programme {programme.id}", field="reward")
    return reward


def check_redeemable(programme: Programme, reward: Reward, *, tier_id: str, now: datetime,
                     redeemed_by_member: int) -> None:
    """Raise the reason this member cannot have this reward now, if there is one."""
    local_day = now.astimezone(programme.tz).date()
    if reward.from_ is not None and local_day < reward.from_:
        raise RewardNotAvailable(
            f"reward {reward.id} can be redeemed from {reward.from_}", field="reward"
        )
    if reward.until is not None and local_day > reward.until:
        raise RewardNotAvailable(
            f"reward {reward.id} could be redeemed until {reward.until}", field="reward"
        )
    if reward.tiers is not None and tier_id not in reward.tiers:
        raise RewardNotForTier(
            f"reward {reward.id} is for tiers {', '.join(reward.tiers)}; the member is {tier_id}",
            field="reward",
        )
    if reward.per_member_limit is not None and redeemed_by_member >= reward.per_member_limit:
        raise RewardLimitReached(
            f"reward {reward.id} is limited to {reward.per_member_limit} per member",
            field="reward",
        )


def voucher_expires_at(reward: Reward, issued_at: datetime) -> datetime | None:
    if reward.voucher is None:
        return None
    return issued_at + timedelta(days=reward.voucher.valid_days)


def check_usable(*, expires_at: datetime | None, used_at: datetime | None, now: datetime,
                 code: str) -> None:
    if used_at is not None:
        raise VoucherUsed(f"voucher {code} was used at {used_at.isoformat()}", field="code")
    if expires_at is not None and now >= expires_at:
        raise VoucherExpired(f"voucher {code} expired at {expires_at.isoformat()}", field="code")


def voucher_benefit(reward: Reward) -> dict[str, str]:
    voucher = reward.voucher
    assert voucher is not None
    if voucher.free_item is not None:
        return {"kind": "free_item", "free_item": voucher.free_item}
    if voucher.amount_off is not None:
        return {"kind": "amount_off", "amount_off": str(voucher.amount_off)}
    return {"kind": "percent_off", "percent_off": str(voucher.percent_off)}
