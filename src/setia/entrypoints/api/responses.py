"""JSON responses rendered by orjson: the same compact UTF-8 JSON as Starlette's
``JSONResponse`` (``ensure_ascii=False``, no spaces), at a fraction of the cost."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import JSONResponse as _StarletteJSON


class JSONResponse(_StarletteJSON):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)
