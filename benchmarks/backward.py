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

import time
from contextlib import contextmanager

import harness
import torch
import torch.nn.functional as F

from main_models import ContractiveTanhBlock, FPILayer, SolverSettings, resolve_device, set_threads


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


VARIANTS: dict[str, dict] = {
    "unrolled": {"grad": "unrolled"},
    "implicit": {"grad": "implicit"},
    "implicit-tol1e-5": {"grad": "implicit", "backward_tol_from_forward": False},
    "phantom": {"grad": "phantom"},
}
"""Gradient variants: FPILayer keyword arguments. "implicit" is the layer's default (adjoint
tolerance matched to each row's forward residual); "implicit-tol1e-5" solves the adjoint to 1e-5
whatever the forward reached (paper Algorithm 1)."""


def measure(variant: str, iters: int, batch: int, dim: int, device: torch.device, repeats: int) -> dict:
    torch.manual_seed(0)
    block = ContractiveTanhBlock(dim, dim, contraction=0.95).to(device).eval()
    # an unreachable tol forces exactly `iters` forward iterations; the adjoint solve runs with the
    # layer's defaults (at most 2 * iters iterations)
    layer = FPILayer(block, SolverSettings(tol=1e-30, max_iter=iters, **VARIANTS[variant]))
    mode = VARIANTS[variant]["grad"]
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
        "mode": variant,
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
        results = {variant: measure(variant, iters, batch, dim, device, repeats) for variant in VARIANTS}
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
                        (r["cuda_peak_bytes"] / ref["cuda_peak_bytes"])
                        if r["cuda_peak_bytes"] is not None
                        else r["saved_bytes"] / ref["saved_bytes"]
                    ),
                    "cosine_to_unrolled": float(F.cosine_similarity(r["grad"], ref["grad"], dim=0)),
                    "adjoint_iterations": r["adjoint_iterations"],
                }
            )
    return {"benchmark": "backward", "device": str(device), "batch": batch, "dim": dim, "repeats": repeats, "rows": rows}


def cotrain_gradients(repeats: int, warmup_epochs: int = 3, warmup_samples: int | None = None) -> list[dict]:
    """The gradient of one co-training update (64 samples along random paths of up to T = 6 FPI
    steps, stop probability 0.3, forward tol 1e-3: what the engine's updates see) on the digits MLP
    after a short warm-up (on the first ``warmup_samples`` training samples; None: all of them), for
    each variant: its time (forward + backward, median) and its cosine to the unrolled gradient over
    all of the main model's parameters."""
    from main_models import MainModelTrainer, build_main_model, load_dataset, random_paths

    splits = load_dataset("digits", None, seed=0)
    torch.manual_seed(0)
    model = build_main_model(splits)
    MainModelTrainer(model, splits.x_train[:warmup_samples], splits.y_train[:warmup_samples]).warm_up(warmup_epochs, max_steps=6, seed=0)
    model.train()
    generator = torch.Generator().manual_seed(0)
    index = torch.randint(0, splits.y_train.shape[0], (64,), generator=generator)
    paths = random_paths(6, model.num_layers, 0.3, "cpu")(64, generator)
    x, y = splits.x_train[index], splits.y_train[index]
    state = {k: v.clone() for k, v in model.state_dict().items()}  # spectral-norm vectors move in train mode
    results = {}
    for variant, options in VARIANTS.items():
        model.configure_solver(grad=options["grad"])
        for layer in model.layers:
            layer.backward_tol_from_forward = options.get("backward_tol_from_forward", True)
        times = []
        for _ in range(repeats + 1):
            model.load_state_dict(state)
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            logits, _ = model.run_paths(x, paths)
            F.cross_entropy(logits, y).backward()
            times.append(time.perf_counter() - start)
        grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results[variant] = {"seconds": sorted(times[1:])[len(times[1:]) // 2], "grad": grad}
    model.configure_solver(grad="implicit")
    ref = results["unrolled"]
    return [
        {
            "mode": v,
            "seconds": r["seconds"],
            "time_vs_unrolled": r["seconds"] / ref["seconds"],
            "cosine_to_unrolled": float(F.cosine_similarity(r["grad"], ref["grad"], dim=0)),
        }
        for v, r in results.items()
    ]


def _table(result: dict) -> list[str]:
    lines = [
        f"FPI layer, batch {result['batch']}, width {result['dim']}, {result['device']}, denormals flushed: {result['flush_denormal']}",
        f"{'iters':>5} | {'mode':>16} | {'bwd ms':>8} | {'bwd/unrolled':>12} | {'fwd+bwd ms':>10} | {'fwd+bwd/unrolled':>16} | "
        f"{'memory MiB':>10} | {'mem/unrolled':>12} | {'cos to unrolled':>15} | adjoint iters",
    ]
    lines += [
        f"{r['forward_iterations']:>5} | {r['mode']:>16} | {1000 * r['backward_seconds']:8.2f} | {r['backward_time_vs_unrolled']:12.2f} | "
        f"{1000 * r['seconds']:10.2f} | {r['time_vs_unrolled']:16.2f} | {r['memory_bytes'] / 2**20:10.3f} | "
        f"{r['memory_vs_unrolled']:12.3f} | {r['cosine_to_unrolled']:15.4f} | {r['adjoint_iterations'] or '-'}"
        for r in result["rows"]
    ]
    if "cotrain" in result:
        lines += [
            "\none co-training update of the digits MLP (64 samples, random paths, forward tol 1e-3)",
            f"{'mode':>16} | {'fwd+bwd ms':>10} | {'vs unrolled':>11} | {'cos to unrolled':>15}",
        ]
        lines += [
            f"{r['mode']:>16} | {1000 * r['seconds']:10.2f} | {r['time_vs_unrolled']:11.2f} | {r['cosine_to_unrolled']:15.5f}"
            for r in result["cotrain"]
        ]
    return lines


def main(argv: list[str] | None = None) -> dict:
    parser = harness.parser(
        __doc__, quick="small batch, 10 and 30 iterations, the co-training model warmed up on 256 samples", device="auto"
    )
    parser.add_argument(
        "--keep-denormals",
        action="store_true",
        help="do not flush denormal floats on CPU (unrolled backward through 100 tanh iterations then runs many times "
        'slower on denormal arithmetic: benchmarks/README.md, "Backward: implicit vs unrolled vs phantom")',
    )
    args = parser.parse_args(argv)
    flushed = torch.set_flush_denormal(not args.keep_denormals)
    set_threads(args.threads)
    try:
        device = resolve_device(args.device, "--device")
    except ValueError as err:
        parser.error(str(err))
    if args.quick:
        result = run([10, 30], batch=32, dim=64, device=device, repeats=2)
    else:
        result = run([10, 30, 100], batch=256, dim=256, device=device, repeats=5)
    result["flush_denormal"] = bool(flushed and not args.keep_denormals)
    if device.type == "cpu":
        if args.quick:
            result["cotrain"] = cotrain_gradients(repeats=2, warmup_epochs=1, warmup_samples=256)
        else:
            result["cotrain"] = cotrain_gradients(repeats=10, warmup_epochs=3)
    return harness.show(result, args.json, _table)


if __name__ == "__main__":
    main()
