"""CEL conditions on earn rules.

A rule may carry a condition written in CEL, the Common Expression Language
(https://cel.dev), for example::

    condition: "event.channel == 'app' && member.attributes.city == 'Penang'"

``compile_condition`` parses and type-checks the text once; the resulting
``Condition`` is immutable and may be evaluated any number of times, from any
number of threads. Evaluation is pure: no I/O, no clock, no randomness.

The engine is ``cel-expr-python`` (import ``cel_expr_python``), the Python
binding of the reference C++ CEL implementation. docs/decisions/cel.md says why.

Variables a condition may use (anything else is rejected when compiling):

``event``
    ``id``, ``type``, ``member``, ``occurred_at`` (ISO 8601 string; use
    ``timestamp(event.occurred_at)`` for time arithmetic), ``amount`` (double),
    ``currency``, ``store`` ('' when the event has none), ``channel``,
    ``order_id``, ``categories`` (list of strings), ``skus`` (list of strings),
    ``lines`` (list of maps with ``sku``, ``category``, ``quantity`` (int) and
    ``amount`` (double)), ``weekday`` ('mon' .. 'sun'), ``attributes`` (map).
``member``
    ``id``, ``tier``, ``attributes`` (map of JSON values), ``enrolled_at``
    (ISO 8601 string), ``purchases`` (int).

Rules for authors:

* Reading a map key that is not there (``member.attributes.city`` for a member
  without a city) is an error, and ``evaluate`` raises ``ConditionError``.
  Guard optional keys with ``has()``:
  ``has(member.attributes.city) && member.attributes.city == 'Penang'``.
  ``&&`` and ``||`` absorb an error when the other side decides the result,
  as CEL specifies.
* Comparisons mix int and double freely (``event.amount >= 20`` works), but
  arithmetic does not: write ``event.amount * 2.0``, not ``event.amount * 2``.
* The condition must produce a bool. One that can only produce something else
  (``event.amount + 1.0`` is dynamic, ``1 + 1`` is not) is rejected when
  compiling if CEL can tell, otherwise when evaluating.

Conversion of the context from Python values (done here, per evaluation). Only the
fields a condition's text selects (``event.channel``) are converted and given to CEL;
a variable used any other way (indexed, a macro on it) is given whole
(``Condition.fields``, ``fields_read``). A field it does not read cannot change its
result, so it is not looked at at all:

* ``None`` for a field of ``event``, ``member`` or a line means the field is
  absent (``has()`` is false, reading it is an error), except ``event.store``,
  which becomes ''. Inside an ``attributes`` map (free JSON) ``None`` stays
  ``null``; so it does inside lists.
* ``Decimal`` becomes a double; any ``amount`` of a record is a double even if
  given as an int; enums become their value; ``datetime``/``date`` become ISO
  8601 strings; tuples and sets become lists; str/int/float subclasses become
  the plain type. Other types raise ``ConditionError``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Set
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any, Final

from cel_expr_python import cel as _cel  # type: ignore[import-untyped, unused-ignore]

__all__ = ["Condition", "ConditionError", "compile_condition", "fields_read"]

_VARIABLES: Final = ("event", "member")

# One environment for every condition. The binding's own test suite runs
# compile() and eval() concurrently on a shared environment and expression.
_DYN_MAP = _cel.Type.Map(_cel.Type.STRING, _cel.Type.DYN)
_ENV = _cel.NewEnv(variables={name: _DYN_MAP for name in _VARIABLES})
_BOOL = _cel.Type.BOOL
_DYN = _cel.Type.DYN
_ERROR = _cel.Type.ERROR

# Fields of a record that get a value instead of disappearing when None.
_NONE_DEFAULTS: Final[Mapping[str, Mapping[str, Any]]] = {"event": {"store": ""}}
_JSON_KEYS: Final = frozenset({"attributes"})
_DOUBLE_KEYS: Final = frozenset({"amount"})
_SCALARS: Final = frozenset({str, int, float, bool, bytes})
_ABSENT: Final = object()


class ConditionError(ValueError):
    """A condition is malformed, or could not be evaluated to a bool.

    The message says what is wrong in plain words; it does not repeat the
    condition's text (``Condition.source`` has it).
    """


class Condition:
    """A compiled CEL condition. Its text and compiled form never change; it remembers
    results (at most ``MAX_RESULTS``). Hashable, safe to share between threads."""

    __slots__ = ("_source", "_expression", "_fields", "_results")

    def __init__(self, source: str) -> None:
        """Compile ``source``; raises ``ConditionError`` if it is not a valid condition."""
        if not isinstance(source, str):
            raise ConditionError(f"a condition must be text, not {type(source).__name__}")
        if not source.strip():
            raise ConditionError("the condition is empty")
        try:
            expression = _ENV.compile(source)
        except Exception as exc:  # the binding raises RuntimeError with CEL's report
            raise ConditionError(_compile_message(str(exc), source)) from None
        result_type = expression.return_type()
        if result_type != _BOOL and result_type != _DYN:
            raise ConditionError(
                f"the condition must produce true or false, but it produces "
                f"{_type_name(result_type)}"
            )
        self._source = source
        self._expression = expression
        # Only the variables the text names, and of those only the fields it selects, are
        # converted for an evaluation. A variable can only be read through its name, so a
        # false positive (the word inside a string literal) merely costs a conversion.
        self._fields = fields_read(source)
        # Results by the exact values the condition can read: a programme's conditions see
        # few distinct values (a channel, a tier, a city), and evaluating costs more than
        # looking up. Evaluation is pure, so a result found is the result.
        self._results: dict[Any, bool | str] = {}

    @property
    def fields(self) -> Mapping[str, frozenset[str] | None]:
        """The fields of each variable the text reads (``None``: it may read any, so the
        whole record is given); variables it does not name are left out."""
        return self._fields

    @property
    def source(self) -> str:
        return self._source

    def evaluate(self, context: Mapping[str, Any]) -> bool:
        """True if the condition holds for ``context`` (see the module doc for its shape).

        Raises ``ConditionError`` when evaluation fails (a missing key, a type
        mismatch, a missing variable) or the result is not a bool.
        """
        if not isinstance(context, Mapping):
            raise ConditionError(f"the context must be a mapping, not {type(context).__name__}")
        key = _read_values(context, self._fields)
        if key is not None:
            found = self._results.get(key)
            if found is True or found is False:
                return found
            if found is not None:
                raise ConditionError(found)
        try:
            result = self._evaluate(context)
        except ConditionError as exc:
            if key is not None:
                self._remember(key, str(exc))
            raise
        if key is not None:
            self._remember(key, result)
        return result

    def _remember(self, key: Any, result: bool | str) -> None:
        if len(self._results) >= MAX_RESULTS:
            self._results.clear()
        self._results[key] = result

    def _evaluate(self, context: Mapping[str, Any]) -> bool:
        data: dict[str, Any] = {}
        for name, fields in self._fields.items():
            value = context.get(name)
            if value is None:
                continue  # reported by CEL as a missing variable if actually read
            if not isinstance(value, Mapping):
                raise ConditionError(
                    f"{name!r} in the context must be a mapping, not {type(value).__name__}"
                )
            if fields is not None:  # only what the text can read is converted
                value = {key: value[key] for key in fields if key in value}
            try:
                data[name] = _record(value, _NONE_DEFAULTS.get(name))
            except _Unsupported as exc:
                raise ConditionError(exc.describe(name)) from None
        try:
            result = self._expression.eval(data=data)
            value = result.value()
        except Exception as exc:  # conversion problems surface here
            raise ConditionError(f"the condition cannot be evaluated: {exc}") from None
        if value is True or value is False:
            return value
        if result.type() == _ERROR:
            raise ConditionError(_eval_message(str(value)))
        raise ConditionError(
            f"the condition must produce true or false, but it produced "
            f"{_type_name(result.type())} {value!r}"
        )

    def __repr__(self) -> str:
        return f"Condition({self._source!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Condition):
            return self._source == other._source
        return NotImplemented

    def __hash__(self) -> int:
        return hash((Condition, self._source))

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        # The compiled expression is a native object; recompile from the text.
        return (compile_condition, (self._source,))

    def __copy__(self) -> Condition:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Condition:
        return self


# A variable's name, then ``.field`` when a field is selected from it and not called (a
# macro such as ``event.exists(k, ...)`` works on the whole record).
_SELECTION = re.compile(r"\b(event|member)\b(?:\s*\.\s*([A-Za-z_]\w*)(?!\w|\s*\())?")


def fields_read(source: str) -> dict[str, frozenset[str] | None]:
    """For each variable ``source`` names, the fields it selects from it, or ``None`` when
    it uses the variable in any other way (indexed, passed whole, a macro on it): then it
    may read any field. Text inside string literals and comments counts too, which only
    means a field more is given."""
    found: dict[str, set[str] | None] = {}
    for match in _SELECTION.finditer(source):
        name, field_name = match.group(1), match.group(2)
        if field_name is None:
            found[name] = None
        elif name not in found:
            found[name] = {field_name}
        else:
            fields = found[name]
            if fields is not None:
                fields.add(field_name)
    ordered: dict[str, frozenset[str] | None] = {}  # in _VARIABLES' order
    for name in _VARIABLES:
        if name in found:
            fields = found[name]
            ordered[name] = None if fields is None else frozenset(fields)
    return ordered


MAX_RESULTS = 4096  # results kept per condition; all are forgotten when it is full


def _read_values(context: Mapping[str, Any], fields: Mapping[str, frozenset[str] | None]
                 ) -> Any:
    """The values of ``context`` that a condition reading ``fields`` can see, as a hashable
    key that tells apart every value a condition could tell apart (types included: ``1``,
    ``1.0`` and ``True`` are three keys, and so are ``0.0`` and ``-0.0``); None when a
    value is of a kind this does not key (the condition is then evaluated as it is)."""
    try:
        parts: list[Any] = []
        for name, selected in fields.items():
            value = context.get(name)
            if value is None:
                parts.append(None)
            elif type(value) is not dict:
                return None
            elif selected is None:
                parts.append(_hashable(value))
            else:
                parts.append(tuple((field, _hashable(value[field])) for field in sorted(selected)
                                   if field in value))
        return tuple(parts)
    except _NotKeyed:
        return None


class _NotKeyed(Exception):
    pass


def _hashable(value: Any) -> Any:
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return kind, value
    if kind is float:
        if value != value:  # NaN: its sign is not in its hex(), and CEL can print it
            raise _NotKeyed
        return kind, value.hex()
    if kind is dict:
        return kind, tuple((_hashable(k), _hashable(v)) for k, v in value.items())
    if kind is list or kind is tuple:
        return kind, tuple(_hashable(item) for item in value)
    raise _NotKeyed


def compile_condition(source: str) -> Condition:
    """Compile a CEL condition once; raises ``ConditionError`` if it is malformed."""
    return Condition(source)


# --------------------------------------------------------------------------- conversion


class _Unsupported(Exception):
    """A context value CEL cannot represent; ``path`` grows while unwinding."""

    def __init__(self, value: Any) -> None:
        super().__init__()
        self.value = value
        self.path: list[str] = []

    def describe(self, root: str) -> str:
        where = root + "".join(reversed(self.path))
        return f"{where} holds a {type(self.value).__name__}, which a condition cannot use"


def _record(
    mapping: Mapping[Any, Any], defaults: Mapping[str, Any] | None = None
) -> dict[Any, Any]:
    """A record (event, member, line): None fields are absent, amounts are doubles."""
    out: dict[Any, Any] = {}
    for key, value in mapping.items():
        kind = type(value)
        if kind in _SCALARS and type(key) is str:  # fast path: most fields
            out[key] = float(value) if kind is int and key in _DOUBLE_KEYS else value
            continue
        try:
            cel_key = _key(key)
            if value is None:
                if defaults is not None and cel_key in defaults:
                    out[cel_key] = defaults[cel_key]
                continue
            if cel_key in _JSON_KEYS:
                converted = _value(value, json=True)
            else:
                converted = _value(value, json=False)
                if cel_key in _DOUBLE_KEYS and type(converted) is int:
                    converted = float(converted)
        except _Unsupported as exc:
            exc.path.append(f".{key}" if isinstance(key, str) else f"[{key!r}]")
            raise
        if converted is not _ABSENT:
            out[cel_key] = converted
    return out


def _key(key: Any) -> Any:
    kind = type(key)
    if kind is str or kind is int or kind is bool:
        return key
    if isinstance(key, enum.Enum):
        return _key(key.value)
    if isinstance(key, str):
        return str.__str__(key)
    if isinstance(key, int):
        return int(key)
    raise _Unsupported(key)


def _value(value: Any, *, json: bool) -> Any:
    kind = type(value)
    if kind in _SCALARS:
        return value
    if value is None:
        return None if json else _ABSENT
    if kind is dict or isinstance(value, Mapping):
        if json:
            return _json_map(value)
        return _record(value)
    if kind is list or kind is tuple or isinstance(value, (list, tuple, Set)):
        if all(type(item) in _SCALARS for item in value):  # fast path: lists of strings
            return list(value)
        out = []
        for index, item in enumerate(value):
            try:
                converted = _value(item, json=json)
            except _Unsupported as exc:
                exc.path.append(f"[{index}]")
                raise
            out.append(None if converted is _ABSENT else converted)
        return out
    if isinstance(value, enum.Enum):
        return _value(value.value, json=json)
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise _Unsupported(value)


def _json_map(mapping: Mapping[Any, Any]) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    for key, value in mapping.items():
        if type(value) in _SCALARS and type(key) is str:
            out[key] = value
            continue
        try:
            out[_key(key)] = _value(value, json=True)
        except _Unsupported as exc:
            exc.path.append(f".{key}" if isinstance(key, str) else f"[{key!r}]")
            raise
    return out


# --------------------------------------------------------------------------- messages

_CEL_ERROR = re.compile(r"ERROR: <input>:(\d+):(\d+): (.*)")
_STATUS = re.compile(r"^[A-Z_]+: ")
_EXPECTING_ANYTHING = re.compile(r" expecting (\{[^}]*\}|\S+)")
_UNEXPECTED = re.compile(r"(?:mismatched|extraneous) input ('.*?') expecting (?:\{[^}]*\}|\S+)")


def _type_name(cel_type: Any) -> str:
    name = str(cel_type.name())
    plain = {
        "INT": "an int",
        "UINT": "an unsigned int",
        "DOUBLE": "a double",
        "STRING": "a string",
        "BYTES": "bytes",
        "NULL": "null",
        "BOOL": "a bool",
        "TIMESTAMP": "a timestamp",
        "DURATION": "a duration",
        "TYPE": "a type",
    }.get(name)
    if plain is not None:
        return plain
    if name.startswith("MAP"):
        return "a map"
    if name.startswith("LIST"):
        return "a list"
    return name.lower()


def _overload_message(name: str, arguments: str) -> str:
    operator = re.fullmatch(r"_(\W+)_|(\W)_", name)
    if name == "_[_]":
        what = "indexing with []"
    elif name == "_?_:_":
        what = "the ?: choice"
    elif operator:
        what = f"the operator {operator[1] or operator[2]!r}"
    else:
        what = f"the function {name.strip('.')}()"
    hint = "CEL does not convert between types"
    if "int" in arguments and "double" in arguments:
        hint += ": write 2.0 rather than 2 next to a double, or convert with double() or int()"
    return f"{what} does not apply to ({arguments}); {hint}"


def _compile_message(report: str, source: str) -> str:
    """CEL's compiler report, turned into one plain line per problem."""
    problems = []
    lines = source.splitlines() or [source]
    for match in _CEL_ERROR.finditer(report):
        line, column, text = int(match[1]), int(match[2]), match[3].strip()
        text = re.sub(r"\s*\[[A-Z_]+\]$", "", text)
        syntax = text.startswith("Syntax error: ")
        text = text.removeprefix("Syntax error: ")
        if "mismatched input '<EOF>'" in text:
            text = "the condition ends too early (something is missing at the end)"
        else:
            text = _UNEXPECTED.sub(lambda m: f"unexpected {m[1]}", text)
            text = _EXPECTING_ANYTHING.sub("", text)
            text = re.sub(
                r"undeclared reference to '([^']*)' \(in container '[^']*'\)",
                lambda m: (
                    f"unknown name {m[1].split('.')[0]!r} (conditions can use event "
                    "and member, and CEL's functions)"
                ),
                text,
            )
            text = re.sub(
                r"found no matching overload for '([^']*)' applied to '\((.*)\)'",
                lambda m: _overload_message(m[1], m[2]),
                text,
            )
            text = text.replace("token recognition error at: ", "unexpected characters ")
            if text.startswith("unexpected characters '= "):
                text += " (compare with ==)"
            elif text.startswith(("unexpected characters ''", "unexpected characters '\"")):
                text += " (a string is not closed)"
        where = f"column {column}" if len(lines) == 1 else f"line {line}, column {column}"
        near = ""
        if 0 < line <= len(lines):
            fragment = lines[line - 1][max(column - 1, 0) :][:20].strip()
            if fragment:
                near = f" (near {fragment!r})"
        kind = "syntax error" if syntax else "error"
        problems.append(f"{kind} at {where}{near}: {text}")
    if not problems:
        first = report.strip().splitlines()[0] if report.strip() else "unknown error"
        return f"the condition is not valid CEL: {_STATUS.sub('', first)}"
    # Later problems are mostly the parser losing its footing after the first.
    return problems[0]


def _eval_message(report: str) -> str:
    text = _STATUS.sub("", report.strip())
    key = re.match(r'Key not found in map : "(.*)"$', text)
    if key:
        return (
            f"the key {key[1]!r} is missing from a map; check optional keys with has() "
            f"first, e.g. has(member.attributes.city) && member.attributes.city == 'Penang'"
        )
    var = re.match(r'No value with name "(.*)" found in Activation', text)
    if var:
        return f"the context has no {var[1]!r}"
    method = re.match(r"No matching overloads found : \((.*?)\)\.(\w+)\((.*)\)$", text)
    if method:
        receiver_and_arguments = ", ".join(part for part in (method[1], method[3]) if part)
        return _overload_message(method[2], receiver_and_arguments.replace("int64", "int"))
    overload = re.match(r"No matching overloads found : (.*?)\((.*)\)$", text)
    if overload:
        return _overload_message(overload[1], overload[2].replace("int64", "int"))
    index = re.match(r"Index error: index=(-?\d+) size=(\d+)", text)
    if index:
        return f"list index {index[1]} is out of range (the list has {index[2]} items)"
    return f"the condition cannot be evaluated: {text}"
