"""What every API route shares on the wire: problem answers (RFC 9457) and request bodies
(JSON, or YAML for programmes, within 1 MiB, text every database can store).

The FastAPI routes (``app.read_body``) and the live path's routes (``live.py``) both read
and parse bodies here, so they accept and refuse exactly the same bodies with the same
answers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from itertools import accumulate
from typing import Any

import orjson
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import Receive

from setia.domain.errors import InvalidField, InvalidProgramme
from setia.entrypoints.api.responses import JSONResponse
from setia.service import programmes

MAX_BODY_BYTES = 1024 * 1024
# Arrays and objects nested deeper than this are refused (400): the parsers and the request
# hash recurse (orjson.dumps gives up at 255 levels, json.loads at about 1,000); no request
# of the API needs more than a few.
MAX_DEPTH = 64
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


class MalformedBody(StarletteHTTPException):
    """400 ``malformed-request``: the body cannot be read as a document; ``field`` is
    ``(body)``, the whole of it."""

    field = "(body)"

    def __init__(self, detail: str) -> None:
        super().__init__(400, detail)


def too_deep() -> MalformedBody:
    return MalformedBody(f"the body nests arrays and objects more than {MAX_DEPTH} levels deep")


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


def parse_body(raw: bytes | bytearray, content_type: str, *, yaml_ok: bool = False,
               unique_keys: bool = False) -> Any:
    """The document in a request body read whole (``raw``), by its Content-Type header.
    ``yaml_ok`` (a programme) or ``unique_keys`` (a draft in a body): a JSON object naming
    a key twice is refused, as YAML's is, instead of keeping the last (a second "earn"
    would drop every rule of the first)."""
    media = content_type.split(";")[0].strip().lower()
    if yaml_ok and media in YAML_TYPES:
        # YAML nests by indentation and aliases too, so its depth is known only once it is
        # read (by a parser that recurses: deep enough, it gives up)
        try:
            document = programmes.parse_text(bytes(raw))
        except RecursionError:
            raise too_deep() from None
        if document_deeper(document, MAX_DEPTH):
            raise too_deep()
        check_storable(document)
        return document
    if media != "application/json" and not media.endswith("+json"):
        raise StarletteHTTPException(415, "send the body as application/json")
    if nested_deeper(raw, MAX_DEPTH):
        raise too_deep()
    if yaml_ok or unique_keys:
        _refuse_repeated_keys(raw)
    if b"\\u" not in raw:
        # No \u escape: no NUL character and no unpaired surrogate can be in it (valid JSON
        # has no raw control characters, valid UTF-8 no surrogates), so the fast parser
        # alone decides; a body it refuses is parsed again below for the error message.
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    try:
        body = json.loads(raw, parse_int=_int_as_orjson_reads_it)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MalformedBody(f"the body is not valid JSON: {exc}") from None
    check_storable(body)
    return body


def _repeated_key(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Repeated(key)
            seen.add(key)
    return found


class _Repeated(Exception):
    pass


def _refuse_repeated_keys(raw: bytes | bytearray) -> None:
    """A JSON object naming a key twice is refused where it is (the YAML reader, which
    reads JSON too, says which line), not read keeping the last. Text that is not JSON
    is left to the parser's own refusal."""
    try:
        json.loads(raw, object_pairs_hook=_repeated_key)
    except _Repeated as exc:
        programmes.parse_text(bytes(raw))  # raises InvalidProgramme with the key's place
        raise InvalidProgramme([("(body)", f"the key {exc.args[0]!r} is given twice in one "
                                           "object")]) from None
    except (ValueError, RecursionError):
        return


_QUOTED = re.compile(rb'"[^"]*"')  # a string of the text left by _KEPT: brackets within it
_KEPT = bytes.maketrans(b"{}", b"[]")  # an object's level is a level like an array's
_NOT_KEPT = bytes(sorted(set(range(256)) - set(b'"[]{}')))
_STEPS = bytes.maketrans(b"[]", b"\x01\xff")  # as signed bytes: +1 and -1
WIDE_PASSES = 4


def nested_deeper(raw: bytes | bytearray, limit: int) -> bool:
    """Whether JSON text ``raw`` nests arrays and objects more than ``limit`` levels deep,
    found without parsing it (so without recursion) and at C speed; text that is not JSON
    gets an answer too (the parser refuses it anyway).

    A body with at most ``limit`` opening brackets (nearly every request) passes on two
    counts. Otherwise escapes are dropped (so every quote left opens or closes a string)
    and so is all but quotes and brackets; then the strings, which are nearly all ``""``
    by now; then the innermost empty pairs, one level a pass, which leaves little of a
    wide body; the depth of what is left is the largest running sum of its steps."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    if b"\\" in raw:
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    kept = raw.translate(_KEPT, _NOT_KEPT).replace(b'""', b"")
    if b'"' in kept:  # strings with brackets in them
        kept = _QUOTED.sub(b"", kept)
    passes = min(WIDE_PASSES, limit)
    for _ in range(passes):
        kept = kept.replace(b"[]", b"")  # one level: replace does not look again
    left = limit - passes  # the deepest nesting lost one level a pass
    if kept.count(b"[") <= left:
        return False
    return max(accumulate(memoryview(kept.translate(_STEPS)).cast("b"))) > left


def document_deeper(document: Any, limit: int) -> bool:
    """Whether a document read already nests lists and dicts more than ``limit`` levels
    deep; a walk with a stack of its own, not recursion."""
    if not isinstance(document, dict | list):
        return False
    stack = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        items = value.values() if isinstance(value, dict) else value
        for item in items:
            if isinstance(item, dict | list):
                if depth == limit:
                    return True
                stack.append((item, depth + 1))
    return False


def _int_as_orjson_reads_it(text: str) -> int | float:
    """A JSON whole number as the fast parser (orjson) reads it: an int from -2**63 to
    2**64 - 1, a float past that. The slow parser would keep any int, which the request
    hash (orjson again), the stored result and the database cannot hold: a body reads the
    same whichever parser reads it."""
    number = int(text)
    return number if -(2**63) <= number < 2**64 else float(number)


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
