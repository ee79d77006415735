"""What every API route shares on the wire: problem answers (RFC 9457) and request bodies
(JSON, or YAML for programmes, within 1 MiB, text every database can store).

The FastAPI routes (``app.read_body``) and the live path's routes (``live.py``) both read
and parse bodies here, so they accept and refuse exactly the same bodies with the same
answers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import orjson
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import Receive

from setia.domain.errors import InvalidField
from setia.entrypoints.api.responses import JSONResponse
from setia.service import programmes

MAX_BODY_BYTES = 1024 * 1024
PROBLEM = "application/problem+json"
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml")


class RequestHeaders:
    """A request's headers (``scope["headers"]``) read in one pass, for what every request
    passes (front.py, its rate limits, the live path's routes): ``first`` maps a name to
    its first value, the one Starlette's ``request.headers.get`` answers; ``last`` to its
    last. Names are the lower-case bytes ASGI servers send."""

    __slots__ = ("first", "last")

    def __init__(self, raw: Sequence[tuple[bytes, bytes]]) -> None:
        self.last: dict[bytes, bytes] = dict(raw)
        # a name sent more than once (rare): the first values take a pass of their own
        self.first = self.last if len(self.last) == len(raw) else dict(reversed(raw))

    def get(self, name: bytes) -> str | None:
        """A header's first value as text, as ``request.headers.get`` reads it."""
        value = self.first.get(name)
        return None if value is None else value.decode("latin-1")


def problem_response(
    status: int,
    type_slug: str,
    title: str,
    detail: str,
    field: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"https://setia.dev/problems/{type_slug}",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if field is not None:
        body["field"] = field
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def too_large() -> StarletteHTTPException:
    return StarletteHTTPException(413, f"the body is larger than {MAX_BODY_BYTES} bytes")


def declared_too_large(content_length: str | None) -> bool:
    """Whether a Content-Length header already says the body is over the limit."""
    return (content_length is not None and content_length.isdigit()
            and int(content_length) > MAX_BODY_BYTES)


async def receive_body(receive: Receive, content_length: str | None) -> bytes | bytearray:
    """A request's body, read whole from its ASGI messages as Starlette's
    ``Request.stream`` reads them (ClientDisconnect when the client goes); 413 when the
    Content-Length header (``content_length``) or the body itself is over 1 MiB, without
    reading further. A body sent in one message is returned as it came, uncopied."""
    if declared_too_large(content_length):
        raise too_large()
    raw: bytes | bytearray = b""
    while True:
        message = await receive()
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            if not raw:
                raw = chunk
            elif chunk:
                raw = bytearray(raw) if isinstance(raw, bytes) else raw
                raw.extend(chunk)
            if len(raw) > MAX_BODY_BYTES:
                raise too_large()
            if not message.get("more_body", False):
                return raw
        elif message["type"] == "http.disconnect":
            raise ClientDisconnect()


def parse_body(raw: bytes | bytearray, content_type: str, *, yaml_ok: bool = False) -> Any:
    """The document in a request body read whole (``raw``), by its Content-Type header."""
    media = content_type.split(";")[0].strip().lower()
    if yaml_ok and media in YAML_TYPES:
        document = programmes.parse_text(bytes(raw))
        check_storable(document)
        return document
    if media != "application/json" and not media.endswith("+json"):
        raise StarletteHTTPException(415, "send the body as application/json")
    if b"\\u" not in raw:
        # No \u escape: no NUL character and no unpaired surrogate can be in it (valid JSON
        # has no raw control characters, valid UTF-8 no surrogates), so the fast parser
        # alone decides; a body it refuses is parsed again below for the error message.
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StarletteHTTPException(400, f"the body is not valid JSON: {exc}") from None
    check_storable(body)
    return body


def check_storable(value: Any, path: str = "") -> None:
    """Refuse text no database can hold: NUL characters and unpaired surrogates
    (JSON's \\u escapes allow both)."""
    if isinstance(value, str):
        if "\x00" in value or not encodes(value):
            where = path or "(body)"
            raise InvalidField(f"{where} contains a NUL character or an unpaired surrogate",
                               field=where)
    elif isinstance(value, dict):
        for key, item in value.items():
            check_storable(key, path or "(body)")
            check_storable(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_storable(item, f"{path}[{index}]")


def encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
