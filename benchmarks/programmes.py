"""The programme the ingestion benchmarks run: Kopi Setia, by default without the
sections that the growth and trust features add (campaigns, stamp cards, memberships,
referrals, coupons, surveys, donations, store credit, partners, fraud, privacy,
analytics), so that the figures measure the points path the issue's targets are about.
``--all-sections`` keeps them (docs/benchmarks.md gives both)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from setia.service.programmes import parse_text

KOPI_SETIA = Path(__file__).resolve().parents[1] / "examples" / "programs" / "kopi-setia.yaml"
GROWTH_SECTIONS = ("campaigns", "stamp_cards", "memberships", "referrals", "coupons", "surveys",
                   "causes", "cashback", "partners", "fraud", "privacy", "analytics")


def kopi_setia(*, all_sections: bool = False) -> dict[str, Any]:
    document = parse_text(KOPI_SETIA.read_text(encoding="utf-8"))
    if not all_sections:
        for section in GROWTH_SECTIONS:
            document.pop(section, None)
        document["rewards"] = [r for r in document["rewards"] if "donation" not in r]
        for rule in document["earn"]:
            rule.pop("partners", None)
    return document
