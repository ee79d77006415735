"""CEL conditions on earn rules (setia.domain.conditions)."""

from __future__ import annotations

import copy
import enum
import pickle
import re
import threading
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from setia.domain.conditions import Condition, ConditionError, compile_condition, fields_read

EXAMPLE = "event.channel == 'app' && member.attributes.city == 'Penang'"


def make_context(**changes: Any) -> dict[str, Any]:
    """The context earning builds: every field present, Nones already replaced."""
    event: dict[str, Any] = {
        "id": "evt-1",
        "type": "purchase",
        "member": "m-1",
        "occurred_at": "2024-05-01T10:00:00+08:00",
        "amount": 25.5,
        "currency": "MYR",
        "store": "kl-001",
        "channel": "app",
        "order_id": "ord-1",
        "categories": ["coffee", "pastry"],
        "skus": ["SKU-A", "SKU-B"],
        "lines": [
            {"sku": "SKU-A", "category": "coffee", "quantity": 2, "amount": 20.0},
            {"sku": "SKU-B", "category": "pastry", "quantity": 1, "amount": 5.5},
        ],
        "weekday": "wed",
        "attributes": {},
    }
    member: dict[str, Any] = {
        "id": "m-1",
        "tier": "gold",
        "attributes": {"city": "Penang"},
        "enrolled_at": "2023-01-01T00:00:00+08:00",
        "purchases": 3,
    }
    for dotted, value in changes.items():
        root, _, key = dotted.partition("__")
        target = event if root == "event" else member
        if key.startswith("attributes_"):
            target["attributes"][key.removeprefix("attributes_")] = value
        else:
            target[key] = value
    return {"event": event, "member": member}


CASES = [
    # (expression, context changes, expected)
    (EXAMPLE, {}, True),
    (EXAMPLE, {"event__channel": "web"}, False),
    (EXAMPLE, {"member__attributes_city": "Kuala Lumpur"}, False),
    ("event.amount >= 20.0", {}, True),
    ("event.amount >= 20.0", {"event__amount": 20.0}, True),
    ("event.amount >= 20.0", {"event__amount": 19.99}, False),
    ("event.amount >= 20", {"event__amount": 19.99}, False),  # int literal compares with double
    ("'coffee' in event.categories", {}, True),
    ("'coffee' in event.categories", {"event__categories": ["tea"]}, False),
    ("'coffee' in event.categories", {"event__categories": []}, False),
    ("member.tier == 'gold'", {}, True),
    ("member.tier == 'gold'", {"member__tier": "silver"}, False),
    ("size(event.lines) > 1", {}, True),
    (
        "size(event.lines) > 1",
        {"event__lines": [{"sku": "A", "category": "coffee", "quantity": 1, "amount": 1.0}]},
        False,
    ),
    ("size(event.lines) > 1", {"event__lines": []}, False),
    ("event.store.startsWith('kl-')", {}, True),
    ("event.store.startsWith('kl-')", {"event__store": "pg-004"}, False),
    ("event.store.startsWith('kl-')", {"event__store": ""}, False),
    ("has(member.attributes.city)", {}, True),
    ("has(member.attributes.country)", {}, False),
    ("has(member.attributes.city) && member.attributes.city == 'Penang'", {}, True),
    ("!has(member.attributes.country) || member.attributes.country == 'MY'", {}, True),
    ("event.lines.exists(l, l.category == 'coffee' && l.quantity >= 2)", {}, True),
    ("event.lines.all(l, l.quantity >= 2)", {}, False),
    ("event.weekday in ['sat', 'sun']", {}, False),
    ("member.purchases == 0", {}, False),
    ("timestamp(event.occurred_at) >= timestamp('2024-05-01T00:00:00Z')", {}, True),
]


@pytest.mark.parametrize(("source", "changes", "expected"), CASES)
def test_evaluates_to_exact_result(source: str, changes: dict[str, Any], expected: bool) -> None:
    assert compile_condition(source).evaluate(make_context(**changes)) is expected


def test_compiled_condition_keeps_its_source() -> None:
    condition = compile_condition(EXAMPLE)
    assert isinstance(condition, Condition)
    assert condition.source == EXAMPLE
    assert condition == compile_condition(EXAMPLE)
    assert hash(condition) == hash(compile_condition(EXAMPLE))
    assert condition != compile_condition("member.tier == 'gold'")


# --------------------------------------------------------------------------- compile errors


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("event.amount >=", "syntax error at column 16: the condition ends too early"),
        ("event.channel = 'app'", "syntax error at column 15"),
        ("event.channel = 'app'", "compare with =="),
        ("member.tier == 'gold", "a string is not closed"),
        ("", "the condition is empty"),
        ("   ", "the condition is empty"),
        ("shop.channel == 'app'", "unknown name 'shop'"),
        ("has(event)", "has() argument must be a field selection"),
        ("size(event.lines) > 1.5", "the operator '>' does not apply to (int, double)"),
    ],
)
def test_syntax_error_raises_readable_condition_error(source: str, message: str) -> None:
    with pytest.raises(ConditionError) as raised:
        compile_condition(source)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_condition_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        compile_condition("1 +")


def test_condition_must_be_text() -> None:
    with pytest.raises(ConditionError, match="must be text, not int"):
        compile_condition(42)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- non-bool results


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("1 + 1", "must produce true or false, but it produces an int"),
        ("'gold'", "must produce true or false, but it produces a string"),
        ("event", "must produce true or false, but it produces a map"),
    ],
)
def test_statically_non_bool_condition_is_rejected_when_compiled(source: str, message: str) -> None:
    with pytest.raises(ConditionError, match=message):
        compile_condition(source)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("event.amount", "it produced a double 25.5"),
        ("member.tier", "it produced a string 'gold'"),
        ("event.categories", "it produced a list"),
        ("member.attributes.city", "it produced a string 'Penang'"),
    ],
)
def test_non_bool_result_raises_condition_error(source: str, message: str) -> None:
    condition = compile_condition(source)  # dynamic type: only known when evaluated
    with pytest.raises(ConditionError, match="must produce true or false") as raised:
        condition.evaluate(make_context())
    assert message in str(raised.value)


# --------------------------------------------------------------------------- evaluation errors


def test_missing_key_raises_condition_error_unless_guarded_with_has() -> None:
    condition = compile_condition("member.attributes.country == 'MY'")
    with pytest.raises(ConditionError, match="the key 'country' is missing") as raised:
        condition.evaluate(make_context())
    assert "has()" in str(raised.value)
    assert (
        compile_condition(
            "has(member.attributes.country) && member.attributes.country == 'MY'"
        ).evaluate(make_context())
        is False
    )


def test_or_and_absorb_an_error_when_the_other_side_decides() -> None:
    assert (
        compile_condition("event.channel == 'app' || member.attributes.x == 1").evaluate(
            make_context()
        )
        is True
    )
    assert (
        compile_condition("event.channel == 'web' && member.attributes.x == 1").evaluate(
            make_context()
        )
        is False
    )


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("event.amount * 2 > 40", "the operator '*' does not apply to (double, int)"),
        ("event.lines[5].quantity == 1", "list index 5 is out of range (the list has 2 items)"),
        ("1 / (member.purchases - 3) == 1", "divide by zero"),
    ],
)
def test_evaluation_failure_raises_condition_error(source: str, message: str) -> None:
    with pytest.raises(ConditionError, match=re.escape(message)):
        compile_condition(source).evaluate(make_context())


def test_missing_variable_raises_condition_error() -> None:
    context = make_context()
    del context["member"]
    with pytest.raises(ConditionError, match="the context has no 'member'"):
        compile_condition(EXAMPLE).evaluate(context)


def test_context_must_be_a_mapping() -> None:
    with pytest.raises(ConditionError, match="must be a mapping"):
        compile_condition(EXAMPLE).evaluate([])  # type: ignore[arg-type]
    with pytest.raises(ConditionError, match="'event' in the context must be a mapping"):
        compile_condition(EXAMPLE).evaluate({"event": "app", "member": {}})


def test_unsupported_value_names_its_place() -> None:
    context = make_context(member__attributes_pet=object())
    with pytest.raises(ConditionError, match=r"member\.attributes\.pet holds a object"):
        compile_condition("member.tier == 'gold' && has(member.attributes.x)").evaluate(context)
    with pytest.raises(ConditionError, match=r"member\.attributes\.pet holds a object"):
        compile_condition("size(member) > 0").evaluate(context)


def test_a_field_the_text_does_not_read_is_not_converted() -> None:
    context = make_context(member__attributes_pet=object())
    assert compile_condition("member.tier == 'gold'").evaluate(context) is True


@pytest.mark.parametrize(("source", "fields"), [
    (EXAMPLE, {"event": {"channel"}, "member": {"attributes"}}),
    ("event.amount >= 20.0 && event . store == 'x'", {"event": {"amount", "store"}}),
    ("has(event.order_id)", {"event": {"order_id"}}),
    ("event.lines.exists(l, l.quantity >= 2)", {"event": {"lines"}}),
    ("event.exists(k, k == 'store')", {"event": None}),
    ("event.all (k, k != '')", {"event": None}),
    ("event['channel'] == 'app'", {"event": None}),
    ("size(member) > 0 && member.tier == 'gold'", {"member": None}),
    ("member.tier == 'gold' && size(member) > 0", {"member": None}),
    ("'event.store' == 'x'", {"event": {"store"}}),
    ("eventful == 1 || member_x == 2", {}),
    ("1 == 1", {}),
])
def test_fields_read(source: str, fields: dict[str, set[str] | None]) -> None:
    expected = {name: None if found is None else frozenset(found)
                for name, found in fields.items()}
    assert fields_read(source) == expected


@pytest.mark.parametrize(("source", "changes", "expected"), CASES + [
    ("event.exists(k, k == 'weekday')", {}, True),
    ("event.all(k, k != 'nothing')", {}, True),
    ("size(event) == 14", {}, True),
    ("size(member.attributes) == 1 && event['store'] == 'kl-001'", {}, True),
    ("has(event.nothing)", {}, False),
])
def test_pruned_context_decides_as_the_whole_one(source: str, changes: dict[str, Any],
                                                 expected: bool) -> None:
    """The fields given to CEL are pruned (Condition.fields); earning's context builder
    prunes the same way. Both answer what the whole context answers."""
    from setia.domain import earning

    condition = compile_condition(source)
    context = make_context(**changes)
    assert condition.evaluate(context) is expected
    pruned = {name: {key: value for key, value in record.items()
                     if condition.fields.get(name, frozenset()) is None
                     or key in condition.fields.get(name, frozenset())}
              for name, record in context.items()}
    assert condition.evaluate(pruned) is expected
    assert set(earning._EVENT_FIELDS) == set(make_context()["event"])
    assert set(earning._MEMBER_FIELDS) == set(make_context()["member"])


# --------------------------------------------------------------------------- conversion


def test_none_field_is_absent_but_store_becomes_empty() -> None:
    context = make_context(event__store=None, event__order_id=None)
    assert compile_condition("event.store == ''").evaluate(context) is True
    assert compile_condition("has(event.order_id)").evaluate(context) is False
    with pytest.raises(ConditionError, match="the key 'order_id' is missing"):
        compile_condition("event.order_id == ''").evaluate(context)


def test_none_inside_attributes_is_null() -> None:
    context = make_context(member__attributes_city=None)
    assert compile_condition("has(member.attributes.city)").evaluate(context) is True
    assert compile_condition("member.attributes.city == null").evaluate(context) is True
    assert compile_condition(EXAMPLE).evaluate(context) is False


def test_python_values_are_converted() -> None:
    class Tier(enum.StrEnum):
        GOLD = "gold"

    context = make_context(
        event__amount=Decimal("20.00"),
        event__categories=("coffee",),
        event__skus={"SKU-A"},
        event__occurred_at=datetime(2024, 5, 1, 2, 0, tzinfo=UTC),
        member__tier=Tier.GOLD,
        member__attributes_score=Decimal("1.5"),
    )
    for source in [
        "event.amount == 20.0",
        "event.amount * 2.0 == 40.0",
        "'coffee' in event.categories",
        "'SKU-A' in event.skus",
        "timestamp(event.occurred_at) == timestamp('2024-05-01T02:00:00Z')",
        "member.tier == 'gold'",
        "member.attributes.score == 1.5",
    ]:
        assert compile_condition(source).evaluate(context) is True, source


def test_integer_amounts_are_doubles() -> None:
    context = make_context(event__amount=20)
    context["event"]["lines"][0]["amount"] = 20
    assert compile_condition("event.amount * 2.0 == 40.0").evaluate(context) is True
    assert compile_condition("event.lines[0].amount + 0.5 == 20.5").evaluate(context) is True
    assert compile_condition("member.purchases + 1 == 4").evaluate(context) is True


def test_context_is_not_modified() -> None:
    context = make_context(event__store=None, event__amount=Decimal("3"))
    before = copy.deepcopy(context)
    compile_condition("event.store == ''").evaluate(context)
    assert context == before


# --------------------------------------------------------------------------- reuse and sharing


def test_compiled_condition_is_reusable() -> None:
    condition = compile_condition(EXAMPLE)
    for i in range(200):
        channel = "app" if i % 2 else "web"
        assert condition.evaluate(make_context(event__channel=channel)) is (i % 2 == 1)


def test_compiled_condition_is_safe_to_share_between_threads() -> None:
    condition = compile_condition(EXAMPLE)
    failures: list[str] = []

    def work(worker: int) -> None:
        city = "Penang" if worker % 2 else "Ipoh"
        context = make_context(member__attributes_city=city)
        for _ in range(500):
            if condition.evaluate(context) is not (worker % 2 == 1):
                failures.append(f"worker {worker}")
                return

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_condition_survives_pickle_and_copy() -> None:
    condition = compile_condition(EXAMPLE)
    for clone in (pickle.loads(pickle.dumps(condition)), copy.deepcopy(condition)):
        assert clone == condition
        assert clone.evaluate(make_context()) is True


# --------------------------------------------------------------------------- remembered results

REMEMBERED = [
    "event.channel == 'app' && has(member.attributes.city) && member.attributes.city == 'Penang'",
    "1.0 / event.amount > 0.0",
    "member.attributes.vip == true",
    "member.attributes.level == 1",
    "event.skus.exists(s, s == 'MUG') || member.tier == 'gold'",
    "type(member.attributes.score) == int",
    "string(event.amount) == '-nan'",
]
VALUES: list[Any] = [0.0, -0.0, 1, 1.0, True, False, "1", "Penang", None, [1], {"a": 1},
                     float("nan"), -float("nan")]


def _contexts() -> list[dict[str, Any]]:
    made = []
    for value in VALUES:
        for channel in ("app", "pos"):
            made.append({
                "event": {"channel": channel, "amount": value if isinstance(value, float) else 2.0,
                          "skus": ["MUG"] if value is True else ["TEH"]},
                "member": {"tier": "gold" if value == 1 else "member",
                           "attributes": {"city": value, "vip": value, "level": value,
                                          "score": value}},
            })
        made.append({"event": {"channel": "app", "amount": 1.0, "skus": []},
                     "member": {"tier": "member", "attributes": {}}})
    return made


def _answer(condition: Condition, context: dict[str, Any]) -> Any:
    try:
        return condition.evaluate(context)
    except ConditionError as exc:
        return "error", str(exc)


@pytest.mark.parametrize("source", REMEMBERED)
def test_a_remembered_result_is_the_result_of_evaluating_again(source: str) -> None:
    # Given one condition used for every context (it remembers results), twice over
    kept = compile_condition(source)
    contexts = _contexts() * 2
    # Then every answer, first or remembered, is what a condition that never saw a context
    # answers: values that compare equal but differ in type or sign (1, 1.0, True; 0.0
    # and -0.0) are told apart
    for context in contexts:
        assert _answer(kept, context) == _answer(Condition(source), context), context
    assert 0 < len(kept._results) <= len(contexts) // 2


def test_remembered_results_are_bounded() -> None:
    condition = compile_condition("member.purchases > 3")
    for number in range(10_000):
        assert condition.evaluate({"member": {"purchases": number}}) is (number > 3)
    assert len(condition._results) <= 4096
