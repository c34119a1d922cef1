"""Train and evaluate a fixed-path baseline (paper App. D.1: Model 0..3) on any dataset.

    python benchmarks/fixed_paths.py --dataset parity --fpi-layers ""      # Model 0: no FPI
    python benchmarks/fixed_paths.py --dataset parity --fpi-layers 1,2,3 --out m3.json
    python benchmarks/fixed_paths.py --oracle m0.json m1.json m2.json m3.json

A fixed path is the action sequence every sample follows (``--fpi-layers 1,2`` = FPI on layer 1,
then FPI on layer 2, each followed by re-applying the layers above once), replayed through
:meth:`FPINetwork.run_paths`, so a baseline uses exactly the network, data pipeline and cost
model the agent does. The result (printed, and saved with ``--out``) holds the test accuracy, the
compute per sample in straightforward passes (1 for the plain pass plus the path's FLOPs over the
FLOPs of one plain pass, with each step's actual iteration count), wall times, accuracy and compute
per difficulty level where the dataset has levels, and per-sample correctness and compute.
``--oracle`` combines saved runs: for each test sample, the cheapest run that answers it correctly.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

from main_models import MAIN_MODELS, add_runtime_flags, fixed_path_oracle, parse_fpi_layers, run_baseline, set_threads, write_json


def parse_option(text: str) -> tuple[str, Any]:
    """'key=value' with value read as int, float or string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--data-option must be KEY=VALUE, got {text!r}")
    for cast in (int, float):
        try:
            return key.replace("-", "_"), cast(value)
        except ValueError:
            pass
    return key.replace("-", "_"), value


def _summary(result: dict[str, Any]) -> str:
    lines = [
        f"{result['dataset']} | {result['model']} | path {result['path'] or '[] (plain)'} | "
        f"test accuracy {result['test_accuracy']:.4f} | compute {result['compute']:.3f} straightforward passes | "
        f"{result['mean_fpi_iterations']:.1f} FPI iterations | train {result['train_seconds']:.1f}s, "
        f"wall {result['wall_seconds']:.1f}s"
    ]
    for level, row in result["per_difficulty"].items():
        lines.append(f"  level {level}: accuracy {row['accuracy']:.4f}  compute {row['compute']:.3f}  (n={row['count']})")
    return "\n".join(lines)


def _oracle_summary(result: dict[str, Any]) -> str:
    lines = [f"{result['dataset']} oracle over {len(result['runs'])} runs"]
    for name, acc, comp in zip(result["runs"], result["run_accuracy"], result["run_compute"]):
        lines.append(f"  {name}: accuracy {acc:.4f}  compute {comp:.3f}")
    lines.append(f"  oracle: accuracy {result['oracle_accuracy']:.4f}  compute {result['oracle_compute']:.3f}")
    for level, row in result["per_difficulty"].items():
        lines.append(f"  level {level}: oracle accuracy {row['accuracy']:.4f}  compute {row['compute']:.3f}  (n={row['count']})")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--dataset", default="digits", help="dataset name, or a path to an .npz file")
    parser.add_argument("--model", default=None, choices=sorted(MAIN_MODELS), help="main model (default: the one for the data)")
    parser.add_argument("--data-dir", default=None, help="where dataset files live (default $DYNALAY_DATA_DIR or ./data)")
    parser.add_argument(
        "--data-option", action="append", default=[], metavar="KEY=VALUE", help="loader option, e.g. max_len=64 (repeatable)"
    )
    parser.add_argument("--fpi-layers", default=None, help="the fixed path: '' (Model 0), '1', '1,2', '1,2,3' (Model 3)")
    parser.add_argument("--epochs", type=int, default=20, help="training epochs")
    parser.add_argument("--batch-size", type=int, default=64, help="minibatch size")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data split, model init and shuffling")
    add_runtime_flags(parser, device="cpu")
    parser.add_argument("--out", default=None, help="write the result as JSON to this file (an existing file is refused)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of a summary")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="show a progress bar")
    parser.add_argument(
        "--oracle", nargs="+", default=None, metavar="RUN.json", help="combine saved runs into the oracle instead of training"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.out and Path(args.out).exists() and not args.overwrite:
        parser.exit(2, f"error: {args.out} exists; choose another --out or pass --overwrite to replace it\n")
    if args.oracle is not None:
        if args.fpi_layers is not None:
            parser.error("--oracle combines saved runs; it does not train, so it takes no --fpi-layers")
        try:
            runs = [json.loads(Path(p).read_text()) for p in args.oracle]
            result = fixed_path_oracle(runs)
        except (OSError, json.JSONDecodeError, KeyError, ValueError) as err:
            parser.exit(2, f"error: --oracle: {err}\n")
    else:
        if args.fpi_layers is None:
            parser.error("--fpi-layers is required: '' (Model 0), '1', '1,2' or '1,2,3'")
        if args.epochs < 1 or args.batch_size < 1 or args.lr <= 0 or args.threads < 0:
            parser.error("--epochs and --batch-size must be >= 1, --lr > 0 and --threads >= 0")
        set_threads(args.threads)
        try:
            parse_fpi_layers(args.fpi_layers)
            options = dict(parse_option(o) for o in args.data_option)
            training = {k: getattr(args, k) for k in ("fpi_layers", "data_dir", "epochs", "batch_size", "lr", "seed", "device", "progress")}
            result = run_baseline(args.dataset, model_name=args.model, data_options=options, **training)
        except (ValueError, FileNotFoundError) as err:
            parser.exit(2, f"error: {err}\n")
    if args.out:
        write_json(Path(args.out), result)
    if args.json:
        print(json.dumps(result))
    else:
        print(_oracle_summary(result) if args.oracle is not None else _summary(result))
    return result


if __name__ == "__main__":
    main()
