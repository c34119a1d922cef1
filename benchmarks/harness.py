"""What the benchmark scripts share: their command line and output, mean ± std over seeds (one
policy for missing values), a resumable per-seed runner that writes JSON, merging result files,
figures of accuracy against compute, and Markdown tables.

The scripts run as files (``python benchmarks/NAME.py``), so they import this as ``harness``; a
test loads it with ``conftest.load_script("benchmarks/harness.py")``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from main_models import add_runtime_flags, set_threads

COMPUTE_LABEL = "compute (fraction of FPI on every layer)"


# ---- command line and output -----------------------------------------------------------------
def parser(doc: str, *, quick: str | None = None, device: str | None = None) -> argparse.ArgumentParser:
    """A benchmark's parser, described by the first line of ``doc``: ``--json``, ``--quick`` (where
    ``quick`` says what it shrinks), ``--threads`` and, unless ``device`` is None, ``--device``
    with that default."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    if quick is not None:
        parser.add_argument("--quick", action="store_true", help=quick)
    add_runtime_flags(parser, device=device)
    return parser


def seeds_parser(doc: str, *, quick: str, tasks: Iterable[str], default_tasks: Sequence[str], out_dir: str) -> argparse.ArgumentParser:
    """:func:`parser` for a benchmark run per task and seed, resumable and mergeable: ``--tasks``,
    ``--seeds``, ``--merge`` (summarise earlier result files instead of running) and ``--out-dir``."""
    parsed = parser(doc, quick=quick)
    parsed.add_argument("--tasks", nargs="+", choices=sorted(tasks), default=list(default_tasks), help="tasks to run")
    parsed.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parsed.add_argument("--merge", nargs="+", type=Path, metavar="JSON", help="summarise earlier result files instead of running")
    parsed.add_argument("--out-dir", type=Path, default=Path(out_dir))
    return parsed


def parse_seeds_args(parsed: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse a :func:`seeds_parser`'s flags, set the torch threads and make the output directory."""
    args = parsed.parse_args(argv)
    set_threads(args.threads)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    return args


def show(result: dict[str, Any], as_json: bool, text: Callable[[dict[str, Any]], Iterable[str]]) -> dict[str, Any]:
    """Print ``result`` as one JSON line, or as the lines ``text(result)`` gives; return it."""
    print(json.dumps(result) if as_json else "\n".join(text(result)))
    return result


# ---- statistics over seeds -------------------------------------------------------------------
def mean_std(values: Iterable[float | None]) -> dict[str, Any]:
    """Mean, sample standard deviation and count of ``values``. A missing value (None or NaN: a
    figure a seed does not have, such as a curve that never reaches an accuracy) is left out and
    not counted; with none left the mean is None, with fewer than two the deviation is 0."""
    arr = np.asarray([np.nan if v is None else v for v in values], dtype=float)
    present = arr[~np.isnan(arr)]
    return {
        "mean": float(present.mean()) if present.size else None,
        "std": float(present.std(ddof=1)) if present.size > 1 else 0.0,
        "n": int(present.size),
    }


def stats(rows: Sequence[Mapping[str, Any]], keys: Iterable[str]) -> dict[str, dict[str, Any]]:
    """:func:`mean_std` of each of ``keys`` over ``rows`` (one per seed)."""
    return {k: mean_std([row[k] for row in rows]) for k in keys}


def by_task(entries: Sequence[dict[str, Any]], settings: str) -> dict[str, list[dict[str, Any]]]:
    """Per-seed entries grouped by their ``dataset``, tasks in name order; a task whose seeds ran
    with different ``settings`` (an entry's key) is refused: they are not averaged."""
    out = {}
    for dataset in sorted({e["dataset"] for e in entries}):
        rows = [e for e in entries if e["dataset"] == dataset]
        values = [r.get(settings) for r in rows]
        if any(v != values[0] for v in values):
            raise SystemExit(f"error: the {dataset} seeds ran with different {settings}, refusing to average them: {values}")
        out[dataset] = rows
    return out


# ---- per-seed runs and their result files ----------------------------------------------------
@dataclass
class Job:
    """One seed of one task: ``key`` says what was run (task, seed and every setting that changes
    the result), ``run`` runs it and returns its entry."""

    key: dict[str, Any]
    run: Callable[[], dict[str, Any]]


def run_seeds(
    path: Path, benchmark: str, jobs: Iterable[Job], finish: Callable[[list[dict[str, Any]], float], None]
) -> list[dict[str, Any]]:
    """Run each of ``jobs`` and, after each, hand every entry so far and the seconds spent to
    ``finish`` (which writes the result), so that an interrupted benchmark keeps what it finished.
    A job whose entry ``path`` (this benchmark's result file, from an earlier run) already holds
    under the same key is taken from there instead of run again: running the same command again
    continues where it stopped. Each entry records its key as ``job``."""
    earlier = {}
    if path.is_file():
        earlier = {_canonical(e["job"]): e for _, e in load_results([path], benchmark) if "job" in e}
    entries: list[dict[str, Any]] = []
    start = time.perf_counter()
    for job in jobs:
        entry = earlier.get(_canonical(job.key))
        if entry is None:  # as it will read back from the file (tuples as lists, keys as strings)
            entry = json.loads(json.dumps({**job.run(), "job": job.key}))
        else:
            print(
                f"{benchmark}: {job.key.get('dataset')} seed {job.key.get('seed')} is already in {path}, not run again",
                file=sys.stderr,
                flush=True,
            )
        entries.append(entry)
        finish(entries, time.perf_counter() - start)
    return entries


def collect(
    benchmark: str,
    out_dir: Path,
    summarise: Callable[[list[dict[str, Any]]], dict[str, Any]],
    write: Callable[[dict[str, Any]], None],
    *,
    merge: Sequence[Path] | None = None,
    jobs: Sequence[Job] = (),
    extra: Mapping[str, Any] | None = None,
    before_merge: Callable[[list[tuple[Path, dict[str, Any]]]], None] | None = None,
) -> dict[str, Any]:
    """A benchmark's result, ``{"benchmark", **extra, "summary", "per_seed"}``, handed to ``write``
    (which writes ``out_dir/<benchmark>.json`` and the figures): from the result files ``merge``
    (after ``before_merge`` has seen their entries; the result then records ``merged_from``), or
    else from running ``jobs`` with :func:`run_seeds` (written after every seed; the result records
    the ``seconds`` spent)."""

    def result(entries: list[dict[str, Any]], more: dict[str, Any]) -> dict[str, Any]:
        return {"benchmark": benchmark, **more, **(extra or {}), "summary": summarise(entries), "per_seed": entries}

    if merge:
        found = load_results(merge, benchmark)
        if before_merge is not None:
            before_merge(found)
        out = result([entry for _, entry in found], {"merged_from": [str(p) for p in merge]})
        write(out)
        return out
    last: dict[str, Any] = {}

    def finish(entries: list[dict[str, Any]], seconds: float) -> None:
        last.update(result(entries, {"seconds": seconds}))
        write(last)

    run_seeds(out_dir / f"{benchmark}.json", benchmark, jobs, finish)
    return last


def _canonical(key: Any) -> str:
    return json.dumps(key, sort_keys=True)


def load_results(paths: Sequence[Path], benchmark: str) -> list[tuple[Path, dict[str, Any]]]:
    """The per-seed entries of result files of ``benchmark`` (e.g. seeds run as separate
    processes), each with the file it came from. Refuses a file that is not such a result and a
    (task, seed) found twice."""
    found: list[tuple[Path, dict[str, Any]]] = []
    seen: dict[tuple[str, int], Path] = {}
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SystemExit(f"error: cannot read {path}: {exc}") from None
        if not isinstance(data, dict) or data.get("benchmark") != benchmark or not isinstance(data.get("per_seed"), list):
            raise SystemExit(f"error: {path} is not a {benchmark} result (no 'per_seed' list)")
        for entry in data["per_seed"]:
            key = (entry["dataset"], int(entry["seed"]))
            if key in seen:
                raise SystemExit(
                    f"error: {key[0]} seed {key[1]} appears in both {seen[key]} and {path}: a seed that appears twice "
                    "would be counted twice"
                )
            seen[key] = path
            found.append((Path(path), entry))
    return found


# ---- figures ---------------------------------------------------------------------------------
@contextmanager
def figure(path: Path, panels: int = 1, size: tuple[float, float] = (5.6, 4.2), dpi: int = 130) -> Iterator[list[Any]]:
    """A row of ``panels`` matplotlib axes, each ``size`` inches, saved to ``path`` on leaving."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, panels, figsize=(size[0] * panels, size[1]), dpi=dpi, squeeze=False)
    try:
        yield list(axes[0])
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


@dataclass
class Series:
    """Points on a figure of accuracy against compute: ``x`` and ``y`` drawn in ``style`` (e.g.
    "o-", "s"), with error bars where ``xerr``/``yerr`` are given and each point labelled by
    ``names``; without ``y``, a dotted vertical line at ``x[0]``. ``options`` go to matplotlib."""

    x: Sequence[float]
    y: Sequence[float] = ()
    style: str = "o"
    label: str | None = None
    xerr: Sequence[float] | None = None
    yerr: Sequence[float] | None = None
    names: Sequence[str] = ()
    name_offset: tuple[int, int] = (3, -9)
    options: dict[str, Any] = field(default_factory=dict)


def pareto_figure(
    path: Path,
    panels: Mapping[str, Sequence[Series]],
    *,
    size: tuple[float, float] = (5.6, 4.2),
    log_x: bool = False,
    legend_loc: str = "best",
) -> None:
    """Test accuracy against compute, one panel per entry of ``panels`` (its title -> what it shows)."""
    with figure(path, len(panels), size) as axes:
        for ax, (title, series) in zip(axes, panels.items()):
            for s in series:
                if not s.y:
                    ax.axvline(s.x[0], linestyle=":", color="black", alpha=0.6, label=s.label, **s.options)
                elif s.xerr is not None or s.yerr is not None:
                    ax.errorbar(s.x, s.y, xerr=s.xerr, yerr=s.yerr, fmt=s.style, capsize=2, label=s.label, **s.options)
                else:
                    ax.plot(s.x, s.y, s.style, label=s.label, **s.options)
                for name, x, y in zip(s.names, s.x, s.y):
                    ax.annotate(name, (x, y), textcoords="offset points", xytext=s.name_offset, fontsize=6.5, color=s.options.get("color"))
            if log_x:
                ax.set_xscale("log")
            ax.set_xlabel(COMPUTE_LABEL[:-1] + ", log scale)" if log_x else COMPUTE_LABEL)
            ax.set_ylabel("test accuracy")
            ax.set_title(title)
            ax.grid(alpha=0.3)
            if any(s.label for s in series):
                ax.legend(fontsize=6.5, loc=legend_loc)


def curve(points: Iterable[Mapping[str, Any]], style: str, label: str | None = None, **options: Any) -> Series:
    """A curve through ``points`` (each with ``compute_fraction`` and ``accuracy``, plain numbers or
    {"mean": ...} over seeds) in order of compute."""

    def value(v: Any) -> float:
        return v["mean"] if isinstance(v, Mapping) else v

    pts = sorted((value(p["compute_fraction"]), value(p["accuracy"])) for p in points)
    return Series([c for c, _ in pts], [a for _, a in pts], style, label, options=options)


# ---- Markdown --------------------------------------------------------------------------------
def fmt(value: float | None, digits: int = 3) -> str:
    """A number to ``digits`` decimals; "n/a" where there is none."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def pm(stat: Mapping[str, Any] | None, digits: int = 3) -> str:
    """A :func:`mean_std` as "mean ± std" over several seeds, the mean alone over one, "n/a" over none."""
    if stat is None or stat["mean"] is None:
        return "n/a"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}" if stat["n"] > 1 else f"{stat['mean']:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """A Markdown table's lines (an empty cell as "| |")."""

    def line(cells: Sequence[Any]) -> str:
        return "|" + "".join(f" {cell} |" if str(cell) else " |" for cell in cells)

    return [line(header), "|" + "---|" * len(header), *(line(row) for row in rows)]
