"""QR codes as inline SVG (segno, pure Python)."""

from __future__ import annotations

import io


def svg(text: str, scale: int = 6) -> str:
    import segno  # here, not at start: the server starts faster

    buffer = io.BytesIO()
    segno.make(text, error="m").save(buffer, kind="svg", scale=scale, border=2,
                                    xmldecl=False, svgns=True, title=None)
    return buffer.getvalue().decode()


def member_payload(member_id: str) -> str:
    return f"setia:member:{member_id}"
