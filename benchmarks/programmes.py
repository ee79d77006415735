"""The programme the ingestion benchmarks run: Kopi Setia, by default without the
sections that the growth and trust features add (campaigns, stamp cards, memberships,
referrals, coupons, surveys, donations, store credit, partners, fraud, privacy,
analytics), so that the figures measure the points path the issue's targets are about.
``--all-sections`` keeps them (docs/benchmarks.md gives both)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

from setia.service.programmes import parse_text

KOPI_SETIA = Path(__file__).resolve().parents[1] / "examples" / "programs" / "kopi-setia.yaml"
# (sku, category, price): the café menu both ingestion benchmarks sell; KOPI-SETIA
# triggers the signature-drink rule, pastries the pastry bonus.
MENU = [
    ("KOPI-SETIA", "coffee", Decimal("9.50")), ("LATTE", "coffee", Decimal("12.00")),
    ("AMERICANO", "coffee", Decimal("8.00")), ("TEH-TARIK", "tea", Decimal("6.50")),
    ("MATCHA", "tea", Decimal("13.00")), ("CROISSANT", "pastry", Decimal("8.50")),
    ("KAYA-TOAST", "pastry", Decimal("7.00")), ("MUFFIN", "pastry", Decimal("6.00")),
    ("NASI-LEMAK", "food", Decimal("15.90")), ("BEANS-250G", "retail", Decimal("45.00")),
]
STORES = ["kl-01", "kl-02", "pg-01", "jb-01"]
CHANNELS = ["pos", "pos", "pos", "app"]
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
