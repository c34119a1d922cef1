"""The environment's settings and their defaults, in one place.

Everything that builds a DynaLay environment (``gym.make("DynaLay-v0", ...)``, the vector and SB3
faces, ``agents/train.py``, the evaluation) takes its defaults from :class:`EnvConfig` and
:class:`RewardConfig`, so they cannot drift apart.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from main_models import GRAD_MODES, SOLVERS

if TYPE_CHECKING:
    import torch

LAM_DISTRIBUTIONS = ("uniform", "log-uniform")
MAX_STEPS_PER_LAYER = 2
"""The default step budget T is this many FPI steps per layer (T = 2L)."""


def default_max_steps(num_layers: int) -> int:
    return MAX_STEPS_PER_LAYER * num_layers


def action_names(num_layers: int) -> list[str]:
    """The name of each action: ``NOP`` (answer now), then ``L1`` .. ``LL`` (FPI on layer i)."""
    return ["NOP"] + [f"L{i}" for i in range(1, num_layers + 1)]


def _number(name: str, value: Any, *, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < minimum:
        raise ValueError(f"{name} must be >= {minimum:g} and finite, got {value}")
    return value


def _integer(name: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, numbers.Real) and float(value).is_integer():
            value = int(value)
        else:
            raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


@dataclass(frozen=True)
class RewardConfig:
    """Paper Eq. 2: an answer earns ``alpha * 1[correct]``; an FPI step costs
    ``beta * lam * cost * k``, with cost its FLOPs over one straightforward pass and k the count of
    consecutive choices of the same layer.

    ``lam_range=(low, high)`` draws lambda per episode from that range, so that one agent learns the
    whole trade-off; otherwise every episode uses ``lam``. ``lam_dist`` is how: "uniform", or
    "log-uniform" (uniform in log lambda, for a range that spans decades; low must be > 0).
    """

    alpha: float = 0.5
    beta: float = 0.3
    lam: float = 0.005
    lam_range: tuple[float, float] | None = None
    lam_dist: str = "uniform"

    def __post_init__(self) -> None:
        object.__setattr__(self, "alpha", _number("alpha", self.alpha))
        object.__setattr__(self, "beta", _number("beta", self.beta))
        object.__setattr__(self, "lam", _number("lam", self.lam))
        if self.lam_range is not None:
            try:
                lo, hi = self.lam_range
            except (TypeError, ValueError):
                raise TypeError(f"lam_range must be a pair (low, high), got {self.lam_range!r}") from None
            lo, hi = _number("lam_range low", lo), _number("lam_range high", hi)
            if hi < lo:
                raise ValueError(f"lam_range must satisfy 0 <= low <= high, got {(lo, hi)}")
            object.__setattr__(self, "lam_range", (lo, hi))
        if self.lam_dist not in LAM_DISTRIBUTIONS:
            raise ValueError(f"lam_dist must be one of {LAM_DISTRIBUTIONS}, got {self.lam_dist!r}")
        if self.lam_dist == "log-uniform" and self.lam_range is not None and self.lam_range[0] <= 0:
            raise ValueError(f"a log-uniform lam_range needs low > 0, got {self.lam_range}")

    @property
    def lam_high(self) -> float:
        """The largest lambda an episode can have (the observation space's bound)."""
        return self.lam_range[1] if self.lam_range is not None else self.lam

    def sample(self, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        """lambda for ``n`` new episodes."""
        import torch

        if self.lam_range is None:
            return torch.full((n,), self.lam, device=device)
        lo, hi = self.lam_range
        u = torch.rand(n, device=device, generator=generator)
        if self.lam_dist == "log-uniform":
            return torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * u)
        return lo + (hi - lo) * u

    def fixed(self, lam: float) -> RewardConfig:
        """The same weights with every episode at ``lam`` (how an agent is evaluated)."""
        return replace(self, lam=lam, lam_range=None)


def setting(default: Any, help: str, **metadata: Any) -> Any:
    """A settings dataclass field: its default, its flag's help and any more flag metadata (e.g.
    ``choices``). The one definition that EnvConfig and every agents/ settings class use."""
    return field(default=default, metadata={"help": help, **metadata})


TASK_SETTINGS = ("lam", "pretrain_epochs", "warmup_stop_prob", "train_alternatives", "main_lr")
"""The settings whose right value depends on the task: left unset (None), they come from
:data:`TASK_DEFAULTS`."""

GENERAL_DEFAULTS: dict[str, Any] = {"lam": 0.005, "pretrain_epochs": 10, "warmup_stop_prob": 0.0, "train_alternatives": (), "main_lr": 1e-3}
"""The task settings of a dataset with no entry in :data:`TASK_DEFAULTS` (a user's .npz, CIFAR, ...)."""

TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    # Decisions pay here: the warm-up's short random paths keep the plain path useful for the
    # local questions, training the plain path alongside every update keeps it alive while the
    # agent iterates elsewhere, and lambda 0.05 prices a row solve below the accuracy it buys.
    # Four warm-up epochs, because co-training goes on improving every path the agent uses.
    "grid-lookup": {"lam": 0.05, "pretrain_epochs": 4, "warmup_stop_prob": 0.3, "train_alternatives": ("plain",)},
    # The same reasons on the reachability task (main_models/data/grid_reach.py), with 12 warm-up
    # epochs at a main learning rate of 3e-3: its routes are learnt only after a plateau (4 epochs
    # at 1e-3 leave the hard 30% at chance; benchmarks/README.md, "A second task family").
    "grid-reach": {"lam": 0.05, "pretrain_epochs": 12, "warmup_stop_prob": 0.3, "train_alternatives": ("plain",), "main_lr": 3e-3},
}
"""Per dataset name: the task settings a run of it needs (benchmarks/README.md, "Introspection").
``gym.make``, ``train.py`` and the evaluation read them through :class:`EnvConfig`; an explicit
value always wins."""


def task_defaults(dataset: str) -> dict[str, Any]:
    """The task settings of ``dataset`` (a name, or a file path: its file name is looked up)."""
    return {**GENERAL_DEFAULTS, **TASK_DEFAULTS.get(dataset, TASK_DEFAULTS.get(str(dataset).rsplit("/", 1)[-1], {}))}


@dataclass(frozen=True)
class EnvConfig:
    """How a DynaLay environment is built: data, main model, reward, budget and main-model training.

    These are the keyword arguments of ``gym.make("DynaLay-v0", ...)`` and of every face; the
    training scripts' environment flags are generated from these fields and their help.
    """

    dataset: str = setting("grid-lookup", "dataset name (see main_models.DATASETS) or a path to an .npz file")
    data_dir: str | None = setting(None, "where dataset files live (default $DYNALAY_DATA_DIR or ./data)")
    model: str | None = setting(
        None,
        "main model: a name of main_models.MAIN_MODELS (mlp, cnn, lstm, grid-lstm) or one added "
        "with main_models.register_model (default: the one for the data)",
    )
    alpha: float = setting(RewardConfig.alpha, "Eq. 2 weight of a correct answer")
    beta: float = setting(RewardConfig.beta, "Eq. 2 weight of compute cost x consecutive-layer count")
    lam: float | None = setting(
        None,
        "compute penalty weight lambda (training without lam_range; evaluation); "
        "default: the dataset's (dynalay_env.TASK_DEFAULTS; 0.005 elsewhere)",
    )
    lam_range: tuple[float, float] | None = setting(None, "'low,high': draw lambda per episode from this range while training")
    lam_dist: str = setting("uniform", "how lambda is drawn from lam_range: uniform or log-uniform (low > 0)")
    max_steps: int | None = setting(None, "step budget T per episode (default 2L)")
    cotrain: bool = setting(True, "co-train the main model on the paths the agent chose")
    cotrain_every: int = setting(64, "finished episodes per main-model update (K)")
    main_lr: float | None = setting(None, "Adam learning rate of the main model; default: the dataset's (1e-3 elsewhere)")
    pretrain_epochs: int | None = setting(
        None, "warm-up epochs of the main model on random paths before the agent starts (paper 4.4); default: the dataset's (10 elsewhere)"
    )
    warmup_stop_prob: float | None = setting(
        None,
        "per-step stop probability of the warm-up path sampler (0: full-length random FPI paths); default: the dataset's (0 elsewhere)",
    )
    train_alternatives: tuple[str, ...] | None = setting(
        None,
        "paths every main-model update (warm-up and co-training) also trains on its samples: plain, random "
        "(main_models.ALTERNATIVE_PATHS); default: the dataset's (none elsewhere)",
    )
    fpi_solver: str | None = setting(
        None,
        "how each FPI step finds its fixed point: picard (plain iteration) or anderson "
        "(Anderson acceleration, its own work charged too); default: the main model's own "
        "(anderson for mlp and cnn, picard for the LSTMs; benchmarks/solver.py); the mlp's "
        "warm-up and co-training updates, which are charged to no policy, iterate plainly",
    )
    main_grad: str | None = setting(
        None,
        "the main model's gradient through each fixed point in its warm-up and co-training "
        "updates: implicit (exact, an adjoint solve per FPI step), phantom (one step from the "
        "fixed point: cheaper, approximate), unrolled or exact (the LSTMs' direct scan); default: "
        "the main model's own (main_models.TRAINING_GRADS: phantom for mlp and cnn, exact for the LSTMs)",
    )
    seed: int = setting(0, "seeds the main model's initialisation, the warm-up and the episode sampler")
    main_model: str | None = setting(
        None, "a main_model.pt written by a DynaLay run: start from those co-trained weights (no warm-up) instead of a fresh model"
    )
    save_main_model: str | None = setting(
        None, "write the main model to this path when the environment is closed (for clients that rebuild the env from its id, e.g. RL Zoo)"
    )
    progress: bool = setting(True, "show a progress bar while the main model warms up")
    warmup_cache: str | None = setting(
        None,
        "where warmed-up main models are cached, keyed by everything that decides the "
        "warm-up: default the user's cache directory ($DYNALAY_CACHE_DIR, else "
        "~/.cache/dynalay); a directory; or 'off' (also DYNALAY_WARMUP_CACHE=0)",
    )
    observation: tuple[str, ...] = setting(
        ("activations", "lam", "progress", "confidence"),
        "the observation's feature groups (dynalay_env.OBSERVATION_GROUPS): activations, lam, progress, confidence, margin, "
        "iterated, residuals",
    )

    def __post_init__(self) -> None:
        if not isinstance(self.dataset, str) or not self.dataset:
            raise TypeError(f"dataset must be a dataset name or a path to an .npz file, got {self.dataset!r}")
        for name, value in task_defaults(self.dataset).items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        reward = self.reward  # validates the reward fields
        for name in ("alpha", "beta", "lam", "lam_range"):
            object.__setattr__(self, name, getattr(reward, name))
        if isinstance(self.warmup_cache, bool):  # gym.make(..., warmup_cache=False) reads naturally
            object.__setattr__(self, "warmup_cache", None if self.warmup_cache else "off")
        for name in ("data_dir", "model", "main_model", "save_main_model", "warmup_cache"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be a string or None, got {type(value).__name__} {value!r}")
        if self.max_steps is not None:
            object.__setattr__(self, "max_steps", _integer("max_steps", self.max_steps, minimum=1))
        object.__setattr__(self, "cotrain_every", _integer("cotrain_every", self.cotrain_every, minimum=1))
        object.__setattr__(self, "pretrain_epochs", _integer("pretrain_epochs", self.pretrain_epochs, minimum=0))
        object.__setattr__(self, "seed", _integer("seed", self.seed, minimum=0))
        for name in ("observation", "train_alternatives"):
            value = getattr(self, name)
            names = value.split(",") if isinstance(value, str) else list(value)
            object.__setattr__(self, name, tuple(str(g).strip() for g in names if str(g).strip()))
        for name in ("cotrain", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.fpi_solver is not None and self.fpi_solver not in SOLVERS:
            raise ValueError(f"fpi_solver must be one of {list(SOLVERS)}, got {self.fpi_solver!r}")
        if self.main_grad is not None and self.main_grad not in GRAD_MODES:
            raise ValueError(f"main_grad must be one of {list(GRAD_MODES)}, got {self.main_grad!r}")
        if _number("main_lr", self.main_lr) == 0:
            raise ValueError("main_lr must be > 0")
        if _number("warmup_stop_prob", self.warmup_stop_prob) > 1:
            raise ValueError(f"warmup_stop_prob must be in [0, 1], got {self.warmup_stop_prob}")

    @property
    def reward(self) -> RewardConfig:
        return RewardConfig(self.alpha, self.beta, self.lam, self.lam_range, self.lam_dist)
