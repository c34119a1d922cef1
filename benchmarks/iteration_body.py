"""One solver iteration, eager against ``torch.compile``: is compiling the loop body worth it?

The body is what every plain-iteration step of the default main model runs: the block's image
``tanh(W z + inj)`` (width 64), its residual and the convergence test. It is timed at the row counts
a layer group sees in the environment (a few rows, a step's share of N = 256, all 256), after a
warm-up that includes compilation (``dynamic=True``, so row counts that change as rows converge do
not recompile).

    python benchmarks/iteration_body.py
    python benchmarks/iteration_body.py --quick --json
"""

from __future__ import annotations

import time
from typing import Any, Callable

import harness
import torch

from main_models import set_threads

WIDTH = 64


def make_body(weight: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]]:
    def body(z: torch.Tensor, injection: torch.Tensor, tol: float) -> tuple[torch.Tensor, torch.Tensor]:
        f = torch.tanh(torch.addmm(injection, z, weight.t()))
        rel = torch.linalg.vector_norm(f - z, dim=1) / torch.linalg.vector_norm(f, dim=1).clamp_min(1e-12)
        return f, ~(rel >= tol)

    return body


def time_body(body: Callable, rows: int, calls: int) -> float:
    z, injection = torch.randn(rows, WIDTH), torch.randn(rows, WIDTH)
    for _ in range(20):
        body(z, injection, 1e-3)
    start = time.perf_counter()
    for _ in range(calls):
        body(z, injection, 1e-3)
    return (time.perf_counter() - start) / calls


def run(row_counts: list[int], calls: int, probe_vec_isa: bool = True) -> dict[str, Any]:
    """``probe_vec_isa=False`` (--quick) trusts the SIMD instruction sets the CPU reports, for the rest
    of the process, instead of having inductor dry-compile and load a probe program for each of them
    before its first compile (over ten CPU seconds the first time on a machine, until its inductor
    cache holds them); the kernel compiled is the one the probes would have picked where they all pass."""
    if not probe_vec_isa:
        from torch._inductor import config as inductor_config

        inductor_config.cpp.vec_isa_ok = True
    torch.manual_seed(0)
    eager = make_body(torch.randn(WIDTH, WIDTH) * 0.1)
    compiled = torch.compile(eager, dynamic=True)
    rows = []
    compile_error = None
    for n in row_counts:
        e = time_body(eager, n, calls)
        c = None
        if compile_error is None:
            try:
                c = time_body(compiled, n, calls)
            except Exception as err:  # inductor needs a C++ compiler; without one there is nothing to compare
                compile_error = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        rows.append(
            {
                "rows": n,
                "eager_us": 1e6 * e,
                "compiled_us": None if c is None else 1e6 * c,
                "compiled_vs_eager": None if c is None else c / e,
            }
        )
    return {
        "benchmark": "iteration_body",
        "width": WIDTH,
        "calls": calls,
        "torch_threads": torch.get_num_threads(),
        "compile_error": compile_error,
        "rows": rows,
    }


def _table(result: dict[str, Any]) -> list[str]:
    lines = [
        f"one plain-iteration body, width {WIDTH}, {result['torch_threads']} thread(s), {result['calls']} calls each",
        f"{'rows':>5} | {'eager us':>9} | {'compiled us':>11} | {'compiled/eager':>14}",
    ]
    for r in result["rows"]:
        compiled = (
            f"{r['compiled_us']:11.1f} | {r['compiled_vs_eager']:14.2f}" if r["compiled_us"] is not None else f"{'-':>11} | {'-':>14}"
        )
        lines.append(f"{r['rows']:>5} | {r['eager_us']:9.1f} | {compiled}")
    if result["compile_error"]:
        lines.append(f"torch.compile failed here: {result['compile_error']}")
    return lines


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = harness.parser(__doc__, quick="fewer calls, two row counts, no probe compiles of the CPU's vector instruction sets")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    if args.quick:
        return harness.show(run([8, 85], calls=200, probe_vec_isa=False), args.json, _table)
    return harness.show(run([8, 85, 256], calls=5000), args.json, _table)


if __name__ == "__main__":
    main()
