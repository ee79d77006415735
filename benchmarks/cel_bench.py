"""Cost of compiling and evaluating a CEL condition (docs/decisions/cel.md).

    python benchmarks/cel_bench.py              # the package Setia uses; about 3 s
    python benchmarks/cel_bench.py --compare    # also the other candidates, if installed

Every evaluation starts from the plain-dict context Setia builds, so the cost
of turning Python values into CEL values is included, as it is in production.
Each measurement stops at --evals calls or after --budget seconds, whichever
comes first, and prints microseconds per call.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXPRESSION = "event.channel == 'app' && member.attributes.city == 'Penang'"

CONTEXT: dict[str, Any] = {
    "event": {
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
    },
    "member": {
        "id": "m-1",
        "tier": "gold",
        "attributes": {"city": "Penang"},
        "enrolled_at": "2023-01-01T00:00:00+08:00",
        "purchases": 3,
    },
}


def per_call_us(call: Callable[[], object], limit: int, budget: float) -> tuple[float, int]:
    """Microseconds per call of ``call``, over at most ``limit`` calls / ``budget`` seconds."""
    call()  # warm up, and fail early
    batch = 100
    done = 0
    spent = 0.0
    while done < limit:
        n = min(batch, limit - done)
        start = time.perf_counter()
        for _ in range(n):
            call()
        spent += time.perf_counter() - start
        done += n
        if budget and spent >= budget:
            break
        batch = min(batch * 2, 10_000)
    return spent / done * 1e6, done


def report(label: str, call: Callable[[], object], limit: int, budget: float) -> None:
    us, n = per_call_us(call, limit, budget)
    print(f"  {label:<44} {us:10.2f} us/call  ({n:,} calls)", flush=True)


def bench_cel_expr_python(args: argparse.Namespace) -> None:
    from cel_expr_python import cel  # type: ignore[import-untyped, unused-ignore]

    dyn_map = cel.Type.Map(cel.Type.STRING, cel.Type.DYN)
    env = cel.NewEnv(variables={"event": dyn_map, "member": dyn_map})
    expression = env.compile(EXPRESSION)
    assert expression.eval(data=CONTEXT).value() is True
    report("compile", lambda: env.compile(EXPRESSION), args.compiles, args.budget)
    report("evaluate", lambda: expression.eval(data=CONTEXT).value(), args.evals, args.budget)


def bench_setia(args: argparse.Namespace) -> None:
    try:
        conditions = importlib.import_module("setia.domain.conditions")
    except ImportError:  # run from a checkout without `pip install -e .`
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
        conditions = importlib.import_module("setia.domain.conditions")
    condition = conditions.compile_condition(EXPRESSION)
    assert condition.evaluate(CONTEXT) is True
    report(
        "compile_condition",
        lambda: conditions.compile_condition(EXPRESSION),
        args.compiles,
        args.budget,
    )
    report(
        "Condition.evaluate (incl. Setia's conversion)",
        lambda: condition.evaluate(CONTEXT),
        args.evals,
        args.budget,
    )


def bench_common_expression_language(args: argparse.Namespace) -> None:
    import cel

    program = cel.compile(EXPRESSION)
    assert program.execute(CONTEXT) is True
    report("compile", lambda: cel.compile(EXPRESSION), args.compiles, args.budget)
    report("evaluate", lambda: program.execute(CONTEXT), args.evals, args.budget)


def bench_cel_python(args: argparse.Namespace) -> None:
    import celpy

    env = celpy.Environment()
    program = env.program(env.compile(EXPRESSION))
    assert bool(program.evaluate(celpy.json_to_cel(CONTEXT))) is True
    report("compile", lambda: env.program(env.compile(EXPRESSION)), args.compiles, args.budget)
    report(
        "evaluate (incl. json_to_cel)",
        lambda: program.evaluate(celpy.json_to_cel(CONTEXT)),
        args.evals,
        args.budget,
    )


CANDIDATES: list[tuple[str, str, Callable[[argparse.Namespace], None]]] = [
    ("cel-expr-python", "cel_expr_python", bench_cel_expr_python),
    ("common-expression-language", "cel", bench_common_expression_language),
    ("cel-python", "celpy", bench_cel_python),
]


def version_of(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--compare",
        action="store_true",
        help="also measure the other candidate packages, if installed",
    )
    parser.add_argument("--evals", type=int, default=100_000, help="evaluations per measurement")
    parser.add_argument("--compiles", type=int, default=10_000, help="compiles per measurement")
    parser.add_argument(
        "--budget", type=float, default=0.8, help="seconds per measurement at most (0: no limit)"
    )
    args = parser.parse_args()

    print(f"expression: {EXPRESSION}")
    print(f"python {sys.version.split()[0]}")
    distribution, module, bench = CANDIDATES[0]
    print(f"{distribution} {version_of(distribution)} (import {module}), used by Setia:")
    bench(args)
    bench_setia(args)
    if not args.compare:
        return
    for distribution, module, bench in CANDIDATES[1:]:
        try:
            importlib.import_module(module)
        except ImportError:
            print(f"{distribution}: not installed, skipped")
            continue
        print(f"{distribution} {version_of(distribution)} (import {module}):")
        bench(args)


if __name__ == "__main__":
    main()
