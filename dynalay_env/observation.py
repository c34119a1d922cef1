"""The observation schema: its feature groups, their column layout and bounds, and how the columns
are computed from the main model's state.

The engine keeps the per-row episode state (:class:`~dynalay_env.record.EpisodeState`) and calls
:func:`observe` for the rows whose state changed; everything about what an observation holds and where lives here, so that a new feature
group is added in this module alone (a group, its width, its bounds and its columns).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from main_models import FPINetwork, PathState

from .record import EpisodeState

OBSERVATION_GROUPS: dict[str, str] = {
    "activations": "pooled activations of every layer (summary_bins columns per layer)",
    "lam": "lambda over the largest the env draws, and lambda's log-scale position log10(lam + 1e-4) / 4 + 1 (0 at lambda 0, 1 at 1)",
    "progress": "step index / T, one-hot of the last FPI layer, consecutive-repeat count / T",
    "confidence": "the head's largest class probability",
    "margin": "the head's top-1 minus top-2 probability, and its entropy over log(classes)",
    "iterated": "per layer, 1 where it sits at its fixed point for its current input (it was solved and nothing below it changed since)",
    "residuals": "per layer, the relative fixed-point residual at its current state (costs one application of every layer per "
    "observation, charged to the step that needs it)",
}
"""The observation's feature groups, in column order; an env observes the ones it is given."""
DEFAULT_OBSERVATION: tuple[str, ...] = ("activations", "lam", "progress", "confidence")
LAM_LOG_FLOOR = 1e-4
"""lambda's log-scale feature is log10(lam + LAM_LOG_FLOOR), mapped so that [0, 1] -> [0, 1]."""


def lam_log_position(lam: Tensor | float) -> Tensor:
    lam = torch.as_tensor(lam, dtype=torch.float32)
    return (torch.log10(lam + LAM_LOG_FLOOR) - torch.log10(torch.tensor(LAM_LOG_FLOOR))) / -torch.log10(torch.tensor(LAM_LOG_FLOOR))


class _Column:
    """A named column of an :class:`ObservationLayout`: ``offset`` from its feature group's start
    (from its end when negative). Reading it raises KeyError when the layout lacks the group."""

    def __init__(self, group: str, offset: int = 0) -> None:
        self.group, self.offset = group, offset

    def __get__(self, layout: "ObservationLayout | None", owner: type) -> Any:
        if layout is None:
            return self
        span = layout.group(self.group)
        return span.start + self.offset if self.offset >= 0 else span.stop + self.offset


class _Span:
    """A whole feature group of an :class:`ObservationLayout`, as a slice."""

    def __init__(self, group: str) -> None:
        self.group = group

    def __get__(self, layout: "ObservationLayout | None", owner: type) -> Any:
        return self if layout is None else layout.group(self.group)


@dataclass(frozen=True)
class ObservationLayout:
    """Column slices of the flat float32 observation, for the feature groups it holds."""

    num_layers: int
    summary_dim: int
    groups: tuple[str, ...] = DEFAULT_OBSERVATION

    def __post_init__(self) -> None:
        unknown = [g for g in self.groups if g not in OBSERVATION_GROUPS]
        if unknown or not self.groups:
            raise ValueError(f"observation groups must be a non-empty subset of {list(OBSERVATION_GROUPS)}, got {list(self.groups)}")
        object.__setattr__(self, "groups", tuple(g for g in OBSERVATION_GROUPS if g in self.groups))

    def _widths(self) -> dict[str, int]:
        L = self.num_layers
        return {"activations": self.summary_dim, "lam": 2, "progress": L + 2, "confidence": 1, "margin": 2, "iterated": L, "residuals": L}

    def group(self, name: str) -> slice:
        if name not in self.groups:
            raise KeyError(f"this observation has no {name!r} group (it holds {list(self.groups)})")
        start = 0
        for g in self.groups:
            width = self._widths()[g]
            if g == name:
                return slice(start, start + width)
            start += width
        raise AssertionError(name)

    @property
    def size(self) -> int:
        return sum(self._widths()[g] for g in self.groups)

    activations = _Span("activations")
    lam = _Column("lam")
    lam_log = _Column("lam", 1)
    step_fraction = _Column("progress")
    repeat_fraction = _Column("progress", -1)
    confidence = _Column("confidence")
    margin = _Column("margin")
    entropy = _Column("margin", 1)
    iterated = _Span("iterated")
    residuals = _Span("residuals")

    @property
    def last_action(self) -> slice:
        """One-hot of the last FPI layer chosen (all zero before the first step)."""
        start = self.group("progress").start + 1
        return slice(start, start + self.num_layers)

    def bounds(self, lam_high: float) -> tuple[np.ndarray, np.ndarray]:
        """The observation space's (low, high), float32 (D,), for lambdas up to ``lam_high``."""
        low = np.zeros(self.size, dtype=np.float32)
        high = np.ones(self.size, dtype=np.float32)
        if "activations" in self.groups:
            low[self.activations] = -1.0
        if "lam" in self.groups:
            high[self.lam] = max(lam_high, 0.0)
            high[self.lam_log] = max(float(lam_log_position(lam_high)), 1.0)
        return low, high


def observe(
    layout: ObservationLayout,
    model: FPINetwork,
    state: PathState,
    probs: Tensor,
    confidence: Tensor,
    episodes: EpisodeState,
    rows: Tensor,
    max_steps: int,
) -> Tensor:
    """The observations, float32 (n, D), of the n episodes ``rows`` of ``episodes``: ``state`` is
    their main-model state, ``probs`` the head's class probabilities at it and ``confidence`` the
    largest of them; ``max_steps`` is the budget T. Call it under the model's rollout weights."""
    lay, groups = layout, layout.groups
    obs = torch.empty(probs.shape[0], lay.size, device=probs.device)
    if "activations" in groups:
        obs[:, lay.activations] = model.layer_summaries(state)
    if "lam" in groups:
        lam = episodes.lam_row[rows]
        obs[:, lay.lam] = lam
        obs[:, lay.lam_log] = lam_log_position(lam)
    if "progress" in groups:
        obs[:, lay.step_fraction] = episodes.steps[rows].float() / max_steps
        obs[:, lay.last_action] = F.one_hot(episodes.last_action[rows], layout.num_layers + 1)[:, 1:].float()
        obs[:, lay.repeat_fraction] = episodes.repeat[rows].float() / max_steps
    if "confidence" in groups:
        obs[:, lay.confidence] = confidence
    if "margin" in groups:
        top2 = probs.topk(min(2, probs.shape[1]), dim=1).values
        obs[:, lay.margin] = top2[:, 0] - (top2[:, 1] if top2.shape[1] > 1 else 0.0)
        entropy = -(probs * probs.clamp_min(1e-12).log()).sum(dim=1)
        obs[:, lay.entropy] = entropy / max(float(np.log(probs.shape[1])), 1e-12)
    if "iterated" in groups:
        obs[:, lay.iterated] = episodes.iterated[rows].float()
    if "residuals" in groups:
        obs[:, lay.residuals] = model.fixed_point_residuals(state).clamp(max=1.0)
    return obs
