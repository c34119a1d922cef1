"""FPI layer backward: implicit vs unrolled (and phantom) at 10, 30 and 100 forward iterations.

For each gradient mode and forward iteration count k (the solver is forced to run exactly k
iterations by an unreachable tolerance), time one FPILayer over a batch, the backward pass alone
(``loss.backward()``: the paper's Table 1 "backward pass time", which the target is judged on)
and forward+backward together, and measure the memory the backward pass needs:

* cpu: bytes of tensors autograd saves for backward (``saved_tensors_hooks``), plus the adjoint
  solve's own graph for the implicit mode, measured the same way inside the hook;
* cuda: ``torch.cuda.max_memory_allocated`` over forward+backward, minus what was allocated before.

The forward pass is forced to exactly k iterations; the implicit mode's adjoint solve runs with
the layer's defaults (relative tol 1e-5, paper Algorithm 1; at most 2k iterations) and the
iterations it used are reported.

It also reports the cosine similarity of each gradient (w.r.t. the block's parameters and the
input) to the unrolled gradient. This is the paper's Table 1 "backward pass time" row, made
reproducible.

    python benchmarks/backward.py
    python benchmarks/backward.py --quick --json
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from main_models import ContractiveTanhBlock, FPILayer, add_runtime_flags, set_threads


class SavedBytes:
    """Sums the bytes of every tensor autograd saves for backward while active (peak over the
    pass is this total, since nothing saved is freed before backward)."""

    def __init__(self) -> None:
        self.total = 0

    @contextmanager
    def track(self):
        def pack(t: torch.Tensor):
            self.total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield


def _grads(block: ContractiveTanhBlock, u: torch.Tensor) -> torch.Tensor:
    return torch.cat([u.grad.flatten()] + [p.grad.flatten() for p in block.parameters()])


def measure(mode: str, iters: int, batch: int, dim: int, device: torch.device, repeats: int) -> dict:
    torch.manual_seed(0)
    block = ContractiveTanhBlock(dim, dim, contraction=0.95).to(device).eval()
    # an unreachable tol forces exactly `iters` forward iterations; the adjoint solve runs with the
    # layer's defaults (relative tol 1e-5 as in the paper's Algorithm 1, at most 2 * iters)
    layer = FPILayer(block, tol=1e-30, max_iter=iters, grad=mode)
    u0 = torch.randn(batch, dim, device=device)
    target = torch.randn(batch, dim, device=device)
    times = []
    backward_times = []
    saved = SavedBytes()
    peak = None
    for r in range(repeats + 1):
        block.zero_grad(set_to_none=True)
        u = u0.clone().requires_grad_(True)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        tracker = SavedBytes()
        start = time.perf_counter()
        with tracker.track():
            res = layer(u)
            loss = F.mse_loss(res.z, target)
            if device.type == "cuda":
                torch.cuda.synchronize()
            backward_start = time.perf_counter()
            loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - base
        end = time.perf_counter()
        if r > 0:  # the first pass warms up allocators and kernels
            times.append(end - start)
            backward_times.append(end - backward_start)
            saved = tracker
    return {
        "mode": mode,
        "forward_iterations": iters,
        "seconds": sorted(times)[len(times) // 2],
        "backward_seconds": sorted(backward_times)[len(backward_times) // 2],
        "saved_bytes": saved.total,
        "cuda_peak_bytes": peak,
        "grad": _grads(block, u).detach(),
        "adjoint_iterations": int(layer.last_backward_stats.iterations.max()) if mode == "implicit" else None,
    }


def run(iteration_counts: list[int], batch: int, dim: int, device: torch.device, repeats: int) -> dict:
    rows = []
    for iters in iteration_counts:
        results = {mode: measure(mode, iters, batch, dim, device, repeats) for mode in ("unrolled", "implicit", "phantom")}
        ref = results["unrolled"]
        for mode, r in results.items():
            rows.append(
                {
                    "mode": mode,
                    "forward_iterations": iters,
                    "seconds": r["seconds"],
                    "backward_seconds": r["backward_seconds"],
                    "memory_bytes": r["cuda_peak_bytes"] if r["cuda_peak_bytes"] is not None else r["saved_bytes"],
                    "memory_kind": "cuda_max_memory_allocated" if r["cuda_peak_bytes"] is not None else "autograd_saved_tensors",
                    "time_vs_unrolled": r["seconds"] / ref["seconds"],
                    "backward_time_vs_unrolled": r["backward_seconds"] / ref["backward_seconds"],
                    "memory_vs_unrolled": (
                        (r["cuda_peak_bytes"] / ref["cuda_peak_bytes"]) if r["cuda_peak_bytes"] is not None else r["saved_bytes"] / ref["saved_bytes"]
                    ),
                    "cosine_to_unrolled": float(F.cosine_similarity(r["grad"], ref["grad"], dim=0)),
                    "adjoint_iterations": r["adjoint_iterations"],
                }
            )
    return {"benchmark": "backward", "device": str(device), "batch": batch, "dim": dim, "repeats": repeats, "rows": rows}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="small batch, 10 and 30 iterations")
    add_runtime_flags(parser)
    parser.add_argument("--keep-denormals", action="store_true",
                        help="do not flush denormal floats on CPU (unrolled backward through 100 tanh iterations "
                             "then runs ~17x slower on denormal arithmetic, measured 1505 ms vs 89 ms)")
    args = parser.parse_args(argv)
    flushed = torch.set_flush_denormal(not args.keep_denormals)
    set_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device))
    if args.quick:
        result = run([10, 30], batch=32, dim=64, device=device, repeats=2)
    else:
        result = run([10, 30, 100], batch=256, dim=256, device=device, repeats=5)
    result["flush_denormal"] = bool(flushed and not args.keep_denormals)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"FPI layer, batch {result['batch']}, width {result['dim']}, {result['device']}, denormals flushed: {result['flush_denormal']}")
        print(f"{'iters':>5} | {'mode':>9} | {'bwd ms':>8} | {'bwd/unrolled':>12} | {'fwd+bwd ms':>10} | {'fwd+bwd/unrolled':>16} | "
              f"{'memory MiB':>10} | {'mem/unrolled':>12} | {'cos to unrolled':>15} | adjoint iters")
        for r in result["rows"]:
            print(
                f"{r['forward_iterations']:>5} | {r['mode']:>9} | {1000 * r['backward_seconds']:8.2f} | {r['backward_time_vs_unrolled']:12.2f} | "
                f"{1000 * r['seconds']:10.2f} | {r['time_vs_unrolled']:16.2f} | {r['memory_bytes'] / 2**20:10.3f} | "
                f"{r['memory_vs_unrolled']:12.3f} | {r['cosine_to_unrolled']:15.4f} | {r['adjoint_iterations'] or '-'}"
            )
    return result


if __name__ == "__main__":
    main()
