"""What a DynaLay run shows in TensorBoard, shared by every algorithm.

Tags (one name for every algorithm, so runs overlay):
  charts/episode_reward          mean Eq. 2 return of the episodes finished since the last log
  charts/train_accuracy          share of those episodes answered correctly
  charts/compute                 mean compute per episode, in straightforward passes
  charts/action_freq/<action>    share of actions taken (NOP, L1, ..., LL)
  charts/fpi_iterations/layer<i> mean FPI iterations each time layer i was chosen
  charts/layer_selection         histogram of the actions taken
  charts/SPS                     environment steps per second
  losses/main_model_ce           co-training cross-entropy of the main model
  charts/decisions               figure: per difficulty level, the share of each action at each step
  paths/accuracy/<path>          each fixed path's test accuracy on the co-trained main model (NOP, L1, ...,
                                 and every layer), so that a path the agent stops using can be seen to rot
  eval/accuracy, eval/compute_fraction, eval/mean_episode_length, eval/layer_selection (figure)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
from torch.utils.tensorboard import SummaryWriter

from dynalay_env import EpisodeRecord, action_names


class EpisodeStats:
    """Accumulates finished episodes between two logs."""

    def __init__(self, num_layers: int, max_steps: int) -> None:
        self.num_layers = num_layers
        self.max_steps = max_steps
        self.clear()

    def clear(self) -> None:
        self.records: list[dict[str, np.ndarray]] = []
        self.episodes = 0
        self.correct = 0
        self.returns = 0.0
        self.compute = 0.0
        self.action_counts = np.zeros(self.num_layers + 1, dtype=np.int64)
        self.layer_iterations = np.zeros(self.num_layers, dtype=np.int64)

    def add(self, record: EpisodeRecord) -> None:
        n = len(record)
        if n == 0:
            return
        episodes = record.numpy()
        self.records.append({k: episodes[k] for k in ("path", "steps", "difficulty")})
        self.episodes += n
        self.correct += int(np.sum(episodes["correct"]))
        self.returns += float(np.sum(episodes["return"]))
        self.compute += float(np.sum(episodes["compute"]))
        paths = episodes["path"].reshape(n, -1)
        self.action_counts += np.bincount(paths[paths > 0], minlength=self.num_layers + 1)
        self.action_counts[0] += int(np.sum(episodes["steps"] < self.max_steps))
        self.layer_iterations += episodes["layer_iterations"].reshape(n, -1).sum(axis=0)

    def add_infos(self, infos: Iterable[Mapping[str, Any]]) -> None:
        """SB3-style per-env info dicts; finished episodes carry the episode keys."""
        self.add(EpisodeRecord.from_info_dicts(infos))

    def actions_per_step(self) -> dict[int, list[dict[str, float]]]:
        """The episodes since the last log, as :func:`dynalay_env.evaluation.actions_per_step`."""
        import torch

        from dynalay_env.evaluation import actions_per_step

        joined = {k: torch.from_numpy(np.concatenate([r[k] for r in self.records])) for k in ("path", "steps", "difficulty")}
        return actions_per_step(joined["path"], joined["steps"], joined["difficulty"], self.max_steps, self.num_layers)


class RunLogger:
    """Writes the shared tags to ``run_dir`` with a torch ``SummaryWriter``."""

    def __init__(self, run_dir: Path, num_layers: int, max_steps: int, log_every: int, detail_every: int | None = None) -> None:
        self.writer = SummaryWriter(str(run_dir))
        self.stats = EpisodeStats(num_layers, max_steps)
        self.names = action_names(num_layers)
        self.log_every = max(1, log_every)
        self.detail_every = max(1, detail_every if detail_every is not None else log_every)
        self.last_log_step = 0
        self.last_detail_step = 0
        self._clock = (time.perf_counter(), 0)

    def detail_due(self, step: int) -> bool:
        """Whether ``detail_every`` steps have passed since the last detailed log."""
        return step - self.last_detail_step >= self.detail_every

    def log(self, step: int, main_loss: float | None = None, *, detail: bool | None = None) -> None:
        """Write the charts of the episodes since the last log. The decisions figure is rendered
        when ``detail`` says so, or by default when :meth:`detail_due`."""
        s, w = self.stats, self.writer
        if detail is None:
            detail = self.detail_due(step)
        if s.episodes:
            w.add_scalar("charts/episode_reward", s.returns / s.episodes, step)
            w.add_scalar("charts/train_accuracy", s.correct / s.episodes, step)
            w.add_scalar("charts/compute", s.compute / s.episodes, step)
            total = max(1, int(s.action_counts.sum()))
            for name, count in zip(self.names, s.action_counts):
                w.add_scalar(f"charts/action_freq/{name}", count / total, step)
            for i in range(s.num_layers):
                chosen = int(s.action_counts[i + 1])
                if chosen:
                    w.add_scalar(f"charts/fpi_iterations/layer{i + 1}", s.layer_iterations[i] / chosen, step)
            w.add_histogram(
                "charts/layer_selection",
                np.repeat(np.arange(len(s.action_counts)), s.action_counts),
                step,
                bins=np.arange(len(s.action_counts) + 1) - 0.5,
            )
            if detail:
                w.add_figure("charts/decisions", decisions_figure(s.actions_per_step(), title=f"training, step {step}"), step)
        if detail:
            self.last_detail_step = step
        if main_loss is not None and np.isfinite(main_loss):
            w.add_scalar("losses/main_model_ce", main_loss, step)
        now = time.perf_counter()
        then, then_step = self._clock
        if now > then and step > then_step:
            w.add_scalar("charts/SPS", (step - then_step) / (now - then), step)
        self._clock = (now, step)
        self.last_log_step = step
        s.clear()
        w.flush()

    def log_paths(self, accuracy: Mapping[str, float], step: int) -> None:
        for name, value in accuracy.items():
            self.writer.add_scalar(f"paths/accuracy/{name}", value, step)

    def log_eval(self, report: Any, step: int) -> None:
        w = self.writer
        w.add_scalar("eval/accuracy", report.accuracy, step)
        w.add_scalar("eval/compute_fraction", report.compute_fraction, step)
        w.add_scalar("eval/compute", report.compute, step)
        w.add_scalar("eval/mean_episode_length", report.mean_episode_length, step)
        w.add_figure(
            "eval/layer_selection", layer_selection_figure(report.action_frequency, title=f"step {step}, lambda {report.lam}"), step
        )
        w.add_figure(
            "eval/decisions", decisions_figure(report.actions_per_step, title=f"test split, step {step}, lambda {report.lam:g}"), step
        )
        w.flush()

    def close(self) -> None:
        self.writer.close()


def layer_selection_figure(frequency: list[float], title: str = ""):
    """Bar chart of how often each action was chosen (paper Fig. 3)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = action_names(len(frequency) - 1)
    fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=120)
    ax.bar(names, frequency, color=["#888888"] + ["#3b75af"] * (len(frequency) - 1))
    ax.set_ylabel("share of actions")
    ax.set_ylim(0, 1)
    ax.set_title(title or "layer selection")
    for x, v in enumerate(frequency):
        ax.text(x, v + 0.02, f"{v:.2f}", ha="center", fontsize=8)
    fig.tight_layout()
    return fig


def tradeoff_figure(points: list[dict], reference: dict | None = None, title: str = ""):
    """Accuracy against compute fraction for several lambda values (paper Fig. 5b)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = sorted(points, key=lambda p: p["compute_fraction"])
    fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=120)
    ax.plot([p["compute_fraction"] for p in pts], [p["accuracy"] for p in pts], "o-", label="agent")
    for p in pts:
        ax.annotate(f"λ={p['lam']:g}", (p["compute_fraction"], p["accuracy"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if reference is not None:
        ax.plot([1.0], [reference["fpi_all_accuracy"]], "s", color="#c44e52", label="FPI on every layer")
    ax.set_xlabel("compute (fraction of FPI on every layer)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title or "accuracy / compute trade-off")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def decisions_figure(per_level: Mapping[int, list[Mapping[str, float]]], title: str = ""):
    """Per difficulty level, stacked bars of the share of each action at each step (NOP = answer)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = sorted(per_level)
    fig, axes = plt.subplots(1, len(levels), figsize=(2.6 * len(levels) + 0.6, 2.9), dpi=110, squeeze=False, sharey=True)
    colours = ["#888888", "#3b75af", "#e1812c", "#3a923a", "#c03d3e", "#9372b2", "#845b53", "#d684bd"]
    for ax, level in zip(axes[0], levels):
        steps = per_level[level]
        names = list(steps[0]) if steps else []
        bottom = np.zeros(len(steps))
        for colour, name in zip(colours * 4, names):
            shares = np.array([s.get(name, 0.0) for s in steps])
            ax.bar(np.arange(len(steps)), shares, bottom=bottom, color=colour, label=name, width=0.8)
            bottom += shares
        ax.set_xticks(np.arange(len(steps)))
        ax.set_xlabel("step")
        ax.set_title("all samples" if level == -1 else f"level {level}", fontsize=9)
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel("share of actions")
    axes[0][-1].legend(fontsize=7, loc="upper right")
    fig.suptitle(title or "decisions per difficulty level", fontsize=9)
    fig.tight_layout()
    return fig
