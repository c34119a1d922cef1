"""Evaluation on the test split (a frozen main model, a fixed lambda, each test sample once), the
wall time of the same rollouts, measured apart, and the oracle: the limit of any layer-selection
policy."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Iterator, Mapping, Sequence

import torch
from torch import Tensor
from torch.nn.utils import parametrize

from main_models import DatasetSplits, FPINetwork, PathState, evaluate_fixed_paths, per_level, resolve_device

from .config import RewardConfig, default_max_steps
from .engine import DEFAULT_OBSERVATION, DynaLayEngine, ObservationLayout, StepOutput

Policy = Callable[[Tensor], Tensor]
"""Maps observations (n, D) of the running rows to their actions (n,), on the engine's device."""


@dataclass
class EvalReport:
    accuracy: float
    compute: float
    """Mean compute per sample in units of one straightforward pass (the plain path is 1.0)."""
    compute_fraction: float
    """``compute`` over the compute of 'FPI on every layer' (actions 1, 2, ..., L) on the same samples."""
    fpi_all_accuracy: float
    fpi_all_compute: float
    action_frequency: list[float]
    """Share of all actions taken that were NOP, FPI on layer 1, ..., FPI on layer L."""
    mean_episode_length: float
    num_samples: int
    lam: float
    per_difficulty: dict[int, dict[str, float]]
    """Where the dataset has known difficulty levels: accuracy, compute and count per level."""
    seconds: float = float("nan")
    """Wall time of the batched evaluation rollout (policy + main model; NOP rows get no work):
    NaN unless the report was :meth:`timed` with :func:`time_policy`."""
    fpi_all_seconds: float = float("nan")
    """Wall time of the same rollout for 'FPI on every layer' (NaN unless timed)."""
    sequences_per_level: dict[int, dict[str, float]] = field(default_factory=dict)
    """Per difficulty level (-1 where the dataset has none): the share of each action sequence the
    policy chose, named like "NOP" or "L1,L3"."""
    actions_per_step: dict[int, list[dict[str, float]]] = field(default_factory=dict)
    """Per difficulty level: for each step t, the share of each action among the episodes that
    reached step t (NOP = answered there)."""

    def as_dict(self) -> dict:
        return asdict(self)

    def timed(self, timing: PolicyTiming) -> EvalReport:
        """This report with the wall times of ``timing``."""
        return replace(self, seconds=timing.seconds, fpi_all_seconds=timing.fpi_all_seconds)


@dataclass
class PolicyTiming:
    seconds: float
    """Median wall time of the policy's evaluation rollout over the test split."""
    fpi_all_seconds: float
    """Median wall time of the same rollout for 'FPI on every layer', interleaved with the policy's."""
    repeats: int


@dataclass
class _Rollout:
    correct: Tensor
    compute: Tensor
    steps: Tensor
    difficulty: Tensor
    action_counts: Tensor
    paths: Tensor


def drive(engine: DynaLayEngine, num_samples: int, choose: Callable[[Tensor], Tensor]) -> Iterator[StepOutput]:
    """Run each of the first ``num_samples`` samples of an eval engine's split once,
    ``engine.num_envs`` at a time. Before every step ``choose(live)`` returns the actions of the
    running rows ``live`` (it may read ``engine.obs[live]``, ``engine.steps[live]``, ...); yields
    each step's output."""
    engine.seed(0)
    remaining = num_samples
    while remaining > 0:
        n = min(remaining, engine.num_envs)
        engine.stop()
        engine.reset(torch.arange(n, device=engine.device))
        remaining -= n
        while True:
            live = engine.running.nonzero().squeeze(1)
            if live.numel() == 0:
                break
            actions = torch.zeros(engine.num_envs, dtype=torch.long, device=engine.device)
            actions[live] = choose(live).to(engine.device, torch.long).reshape(-1)
            engine.validate_actions(actions)
            yield engine.step(actions, validate=False)


def _fixed_steps(path: Sequence[int], num_layers: int, max_steps: int) -> list[int]:
    """The FPI steps an episode following the fixed ``path`` takes: up to its first NOP, within the budget."""
    steps = [int(a) for a in path]
    if any(a < 0 or a > num_layers for a in steps):
        raise ValueError(f"a fixed path holds actions in [0, {num_layers}], got {steps}")
    return (steps[: steps.index(0)] if 0 in steps else steps)[:max_steps]


def _eval_engine(
    model: FPINetwork,
    splits: DatasetSplits,
    *,
    reward: RewardConfig,
    max_steps: int | None,
    observation: Sequence[str],
    batch_size: int,
    device: str | torch.device,
) -> DynaLayEngine:
    return DynaLayEngine(
        min(batch_size, int(splits.y_test.shape[0])),
        splits,
        model,
        reward=reward.fixed(reward.lam),
        max_steps=max_steps,
        mode="eval",
        autoreset=False,
        observation=tuple(observation),
        device=device,
    )


def _rollout(engine: DynaLayEngine, policy: Policy | Sequence[int]) -> _Rollout:
    """Run every sample of an eval engine's split once under ``policy`` or a fixed path."""
    L = engine.num_layers
    if callable(policy):
        choose = lambda live: policy(engine.obs[live])  # noqa: E731
    else:
        steps = _fixed_steps(policy, L, engine.max_steps)
        fixed = torch.tensor(steps + [0] * (engine.max_steps + 1 - len(steps)), dtype=torch.long, device=engine.device)
        choose = lambda live: fixed[engine.steps[live]]  # noqa: E731
    columns: dict[str, list[Tensor]] = {k: [] for k in ("correct", "compute", "steps", "difficulty", "path")}
    action_counts = torch.zeros(L + 1, dtype=torch.long, device=engine.device)
    for out in drive(engine, engine.num_samples, choose):
        action_counts += torch.bincount(out.taken, minlength=L + 1)
        for key, parts in columns.items():
            parts.append(out.finished[key])
    c = {k: torch.cat(v) for k, v in columns.items()}
    return _Rollout(c["correct"], c["compute"], c["steps"], c["difficulty"], action_counts, c["path"])


def _fixed_path_rollouts(
    model: FPINetwork,
    splits: DatasetSplits,
    paths: Sequence[Sequence[int]],
    *,
    max_steps: int,
    observation: Sequence[str],
    batch_size: int,
    device: str | torch.device,
) -> list[_Rollout]:
    """What :func:`_rollout` of each fixed path records, from :func:`evaluate_fixed_paths` (shared
    prefixes computed once): every episode takes the same steps, so no engine needs to run them one
    by one."""
    L = model.num_layers
    steps_of = [_fixed_steps(path, L, max_steps) for path in paths]
    layout = ObservationLayout(L, model.summary_dim, tuple(observation))
    # as the environment charges it: an observation with residuals pays for their probe every time
    probe = model.residual_probe_flops / float(model.straightforward_flops) if "residuals" in layout.groups else 0.0
    dev = resolve_device(device)
    x, y = splits.x_test.to(dev), splits.y_test.to(dev)
    n = int(y.shape[0])
    if n == 0:
        raise ValueError(f"dataset {splits.name!r} has no test samples")
    evaluated = evaluate_fixed_paths(model.to(dev), x, y, steps_of, batch_size=min(batch_size, n), observation_cost=probe)
    difficulty = splits.difficulty_test.cpu() if splits.difficulty_test is not None else torch.full((n,), -1, dtype=torch.long)
    rollouts = []
    for steps, ev in zip(steps_of, evaluated):
        counts = torch.bincount(torch.tensor(steps, dtype=torch.long), minlength=L + 1) * n
        counts[0] += n if len(steps) < max_steps else 0  # an episode within its budget answers with a NOP
        padded = torch.tensor(steps + [0] * (max_steps - len(steps)), dtype=torch.long).expand(n, max_steps)
        rollouts.append(_Rollout(ev["correct"], ev["compute"], torch.full((n,), len(steps), dtype=torch.long), difficulty, counts, padded))
    return rollouts


def actions_per_step(
    paths: Tensor, steps: Tensor, difficulty: Tensor, max_steps: int, num_layers: int
) -> dict[int, list[dict[str, float]]]:
    """Per difficulty level, for each step t: the share of each action among the episodes still
    running at t. An episode of ``steps`` FPI steps took ``path[t]`` at t < steps and answered
    (NOP) at t = steps, unless it used the whole budget T."""
    from .config import action_names

    names = action_names(num_layers)
    T = paths.shape[1]
    t = torch.arange(T + 1, device=paths.device).unsqueeze(0)
    padded = torch.cat([paths, torch.zeros_like(paths[:, :1])], dim=1)
    running = t <= steps.unsqueeze(1)
    running &= ~((steps.unsqueeze(1) >= max_steps) & (t == steps.unsqueeze(1)))  # a full budget ends without a NOP step
    table: dict[int, list[dict[str, float]]] = {}
    for level in sorted(set(difficulty.tolist())):
        rows = difficulty == level
        per_step = []
        for k in range(T + 1):
            alive = running[rows, k]
            if not bool(alive.any()):
                break
            counts = torch.bincount(padded[rows, k][alive], minlength=num_layers + 1).double()
            per_step.append({name: float(c) for name, c in zip(names, (counts / counts.sum()).tolist())})
        table[int(level)] = per_step
    return table


def evaluate_policy(
    model: FPINetwork,
    splits: DatasetSplits,
    policy: Policy | Sequence[int],
    *,
    reward: RewardConfig = RewardConfig(),
    max_steps: int | None = None,
    observation: Sequence[str] = DEFAULT_OBSERVATION,
    batch_size: int = 4096,
    device: str | torch.device = "cpu",
    reference: EvalReport | None = None,
) -> EvalReport:
    """Evaluate ``policy`` (a callable on observations, or a fixed action path such as [1, 2, 3])
    on every test sample once, with the main model frozen, at ``reward.lam`` (a lambda range is
    ignored: evaluation is at one lambda). A callable runs in an eval engine, ``batch_size`` rows
    at a time; a fixed path is evaluated by :func:`main_models.evaluate_fixed_paths` (with FPI on
    every layer, in one pass, when there is no ``reference``), charged as the engine would charge it.

    Nothing is timed (``seconds`` and ``fpi_all_seconds`` are NaN): :func:`time_policy` measures
    wall time apart, and :meth:`EvalReport.timed` adds it. ``reference``, a report of FPI on every layer
    on the same model and samples, saves its evaluation: its accuracy and compute are taken from
    there (a sweep of many policies passes one). ``observation`` must be the feature groups the
    policy was trained on (``engine.layout.groups``)."""
    reward = reward.fixed(reward.lam)
    T = _steps_budget(model, max_steps)
    if not callable(policy):
        return evaluate_fixed_policies(
            model,
            splits,
            [policy],
            reward=reward,
            max_steps=T,
            observation=observation,
            batch_size=batch_size,
            device=device,
            reference=reference,
        )[0]
    was_training = model.training
    try:
        engine = _eval_engine(model, splits, reward=reward, max_steps=T, observation=observation, batch_size=batch_size, device=device)
        result = _rollout(engine, policy)
    finally:
        model.train(was_training)
    if reference is None:
        every_layer = list(range(1, model.num_layers + 1))
        ref = _fixed_path_rollouts(
            model, splits, [every_layer], max_steps=T, observation=observation, batch_size=batch_size, device=device
        )[0]
        reference_stats = (float(ref.correct.float().mean()), float(ref.compute.mean()))
    else:
        reference_stats = (reference.fpi_all_accuracy, reference.fpi_all_compute)
    return _report(result, *reference_stats, model=model, splits=splits, lam=reward.lam, max_steps=T)


def evaluate_fixed_policies(
    model: FPINetwork,
    splits: DatasetSplits,
    paths: Sequence[Sequence[int]],
    *,
    reward: RewardConfig = RewardConfig(),
    max_steps: int | None = None,
    observation: Sequence[str] = DEFAULT_OBSERVATION,
    batch_size: int = 4096,
    device: str | torch.device = "cpu",
    reference: EvalReport | None = None,
) -> list[EvalReport]:
    """:func:`evaluate_policy` of each fixed path in ``paths``, in their order, from one pass that
    computes every shared prefix once (:func:`main_models.evaluate_fixed_paths`), FPI on every
    layer included when no ``reference`` is given: each report is the one evaluating its path alone
    gives."""
    reward = reward.fixed(reward.lam)
    T = _steps_budget(model, max_steps)
    every_layer = list(range(1, model.num_layers + 1))
    wanted = [list(p) for p in paths] + ([every_layer] if reference is None else [])
    rollouts = _fixed_path_rollouts(model, splits, wanted, max_steps=T, observation=observation, batch_size=batch_size, device=device)
    if reference is None:
        ref = rollouts.pop()
        reference_stats = (float(ref.correct.float().mean()), float(ref.compute.mean()))
    else:
        reference_stats = (reference.fpi_all_accuracy, reference.fpi_all_compute)
    return [_report(result, *reference_stats, model=model, splits=splits, lam=reward.lam, max_steps=T) for result in rollouts]


def _steps_budget(model: FPINetwork, max_steps: int | None) -> int:
    T = int(max_steps) if max_steps is not None else default_max_steps(model.num_layers)
    if T < 1:
        raise ValueError(f"max_steps must be >= 1, got {T}")
    return T


def _report(
    result: _Rollout,
    fpi_all_accuracy: float,
    fpi_all_compute: float,
    *,
    model: FPINetwork,
    splits: DatasetSplits,
    lam: float,
    max_steps: int,
) -> EvalReport:
    mean_compute = float(result.compute.mean())
    counts = result.action_counts.double()
    return EvalReport(
        accuracy=float(result.correct.float().mean()),
        compute=mean_compute,
        compute_fraction=mean_compute / fpi_all_compute,
        fpi_all_accuracy=fpi_all_accuracy,
        fpi_all_compute=fpi_all_compute,
        action_frequency=(counts / counts.sum()).tolist(),
        mean_episode_length=float(result.steps.float().mean()),
        num_samples=int(splits.y_test.shape[0]),
        lam=lam,
        per_difficulty=per_level(result.correct, result.compute, result.difficulty),
        sequences_per_level=sequence_shares(result.paths, result.difficulty),
        actions_per_step=actions_per_step(result.paths, result.steps, result.difficulty, max_steps, model.num_layers),
    )


def time_policies(
    model: FPINetwork,
    splits: DatasetSplits,
    policies: Mapping[str, tuple[Policy | Sequence[int], Sequence[str]]],
    *,
    repeats: int = 3,
    reward: RewardConfig = RewardConfig(),
    max_steps: int | None = None,
    batch_size: int = 4096,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """The median wall time of ``repeats`` evaluation rollouts over the test split of each of
    ``policies`` (name -> the policy or fixed path, and the observation groups it reads), with the
    main model frozen. Each rollout is what the environment runs for the policy: ``batch_size``
    rows in flight, observation, policy and main-model steps (NOP rows get no work); building the
    engine is not timed. The policies are interleaved, each once per round, so that drift in
    machine load hits all alike; a single rollout of a small test split is noisy on a shared CPU.
    ``repeats=0`` times nothing (every time is NaN)."""
    if repeats < 0:
        raise ValueError(f"timing repeats must be >= 0, got {repeats}")
    times: dict[str, list[float]] = {name: [] for name in policies}
    if repeats == 0:
        return {name: float("nan") for name in policies}
    was_training = model.training
    try:
        engines: dict[tuple[str, ...], DynaLayEngine] = {}
        for _, observation in policies.values():
            if tuple(observation) not in engines:
                engines[tuple(observation)] = _eval_engine(
                    model, splits, reward=reward, max_steps=max_steps, observation=observation, batch_size=batch_size, device=device
                )
        for _ in range(repeats):
            for name, (policy, observation) in policies.items():
                engine = engines[tuple(observation)]
                if engine.device.type == "cuda":
                    torch.cuda.synchronize(engine.device)
                start = time.perf_counter()
                _rollout(engine, policy)
                if engine.device.type == "cuda":
                    torch.cuda.synchronize(engine.device)
                times[name].append(time.perf_counter() - start)
    finally:
        model.train(was_training)
    return {name: statistics.median(t) for name, t in times.items()}


def time_policy(
    model: FPINetwork,
    splits: DatasetSplits,
    policy: Policy | Sequence[int],
    *,
    observation: Sequence[str] = DEFAULT_OBSERVATION,
    repeats: int = 3,
    reward: RewardConfig = RewardConfig(),
    max_steps: int | None = None,
    batch_size: int = 4096,
    device: str | torch.device = "cpu",
) -> PolicyTiming:
    """The wall time of ``policy``'s evaluation rollout and of FPI on every layer's, on engines
    alike (the same ``observation``), as :func:`time_policies` measures it."""
    every_layer = list(range(1, model.num_layers + 1))
    times = time_policies(
        model,
        splits,
        {"policy": (policy, observation), "fpi_all": (every_layer, observation)},
        repeats=repeats,
        reward=reward,
        max_steps=max_steps,
        batch_size=batch_size,
        device=device,
    )
    return PolicyTiming(times["policy"], times["fpi_all"], repeats)


@dataclass
class OracleReport:
    """The limit of any layer-selection policy on a frozen main model."""

    accuracy: float
    compute: float
    compute_fraction: float
    """``compute`` over that of FPI on every layer (actions 1..L) on the same samples."""
    mean_episode_length: float
    per_difficulty: dict[int, dict[str, float]]
    sequences_evaluated: int
    min_confidence: float = 0.0
    """A sequence counted as answering only where the true class got at least this probability."""
    sequences_per_level: dict[int, dict[str, float]] = field(default_factory=dict)
    """Per difficulty level (-1 where the dataset has none): the share of each chosen sequence,
    named like "NOP" or "L1,L3"."""

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class OraclePaths:
    """Per sample: the cheapest action sequence that answers (0-padded to T), its compute in
    straightforward passes, and whether any sequence answers (else the plain path, cost 1)."""

    paths: Tensor
    cost: Tensor
    solved: Tensor
    evaluated: int


@torch.no_grad()
def oracle_paths(
    model: FPINetwork,
    x: Tensor,
    y: Tensor,
    *,
    max_steps: int | None = None,
    min_confidence: float = 0.0,
    batch_size: int = 4096,
    max_depth: int | None = None,
    fallback: bool = False,
) -> OraclePaths:
    """For each sample of (x, y), the cheapest action sequence within the step budget that answers
    it - knowing the label. "Answers" means the head's argmax is the label and, with
    ``min_confidence``, that the label gets at least that probability: a plain pass that is right by
    chance on a coin-flip input is cheap for the oracle but no policy can learn it without the label.
    With ``fallback``, a sample that no sequence answers at ``min_confidence`` gets the cheapest
    sequence that answers at all (a second search), and counts as solved if there is one.

    Exact search, batched over samples and sequences: sequences are expanded one step at a time
    for every sample still in play, and a prefix is dropped as soon as its compute reaches the
    cheapest answer already found for its sample (compute only grows along a sequence).
    ``max_depth`` searches only sequences of at most that many FPI steps (default: the whole
    budget): a sample that no sequence answers keeps all L^k prefixes of depth k in play, so
    the full search grows as L^T for such samples.
    """
    if fallback and min_confidence > 0:
        confident = oracle_paths(
            model, x, y, max_steps=max_steps, min_confidence=min_confidence, batch_size=batch_size, max_depth=max_depth
        )
        # the second search only for the rows the first left unsolved: a row's search never reads another row
        rest = (~confident.solved).nonzero().squeeze(1)
        correct = oracle_paths(model, x[rest], y[rest], max_steps=max_steps, batch_size=batch_size, max_depth=max_depth)
        paths, cost, solved = confident.paths.clone(), confident.cost.clone(), confident.solved.clone()
        paths[rest], cost[rest], solved[rest] = correct.paths, correct.cost, correct.solved
        return OraclePaths(paths, cost, solved, confident.evaluated + correct.evaluated)
    dev = y.device
    was_training = model.training
    model.eval()
    L = model.num_layers
    T = max_steps if max_steps is not None else default_max_steps(L)
    full = float(model.straightforward_flops)
    n = y.shape[0]
    best_cost = torch.full((n,), float("inf"), device=dev)
    best_path = torch.zeros(n, T, dtype=torch.long, device=dev)

    def answers(state: PathState, target: Tensor) -> Tensor:
        probs = torch.softmax(model.readout(state), dim=1)
        return (probs.argmax(1) == target) & (probs.gather(1, target.unsqueeze(1)).squeeze(1) >= min_confidence)

    evaluated = 0
    try:
        with parametrize.cached():
            state = model.straightforward(x)
            ok = answers(state, y)
            best_cost[ok] = 1.0
            evaluated += n
            # frontier rows: (sample index, cumulative compute, the actions so far, state)
            sample = torch.arange(n, device=dev)[~ok]
            cost = torch.ones(sample.shape[0], device=dev)
            prefix = torch.zeros(sample.shape[0], T, dtype=torch.long, device=dev)
            state = state.rows(sample)
            for depth in range(1, min(T, max_depth if max_depth is not None else T) + 1):
                if sample.numel() == 0:
                    break
                m = sample.numel()
                sample = sample.repeat_interleave(L)
                cost = cost.repeat_interleave(L)
                action = torch.arange(1, L + 1, device=dev).repeat(m)
                prefix = prefix.repeat_interleave(L, dim=0)
                prefix[:, depth - 1] = action
                state = state.rows(torch.arange(m, device=dev).repeat_interleave(L))
                new_parts, cost_parts, keep_parts = [], [], []
                for start in range(0, sample.numel(), batch_size):
                    sl = slice(start, start + batch_size)
                    part = state.rows(sl)  # a view of the chunk, no gather copy
                    part, iters = model.fpi_step(part, action[sl])
                    step_cost = (model.fpi_step_flops(action[sl] - 1, iters) / full).float()
                    c = cost[sl] + step_cost
                    ok = answers(part, y[sample[sl]])
                    # an answer at this cost: keep the cheapest per sample, and its path
                    hit = ok & (c < best_cost[sample[sl]])
                    if bool(hit.any()):
                        s_hit, c_hit = sample[sl][hit], c[hit]
                        best_cost.scatter_reduce_(0, s_hit, c_hit, reduce="amin")
                        won = best_cost[s_hit] == c_hit
                        best_path[s_hit[won]] = prefix[sl][hit][won]
                    new_parts.append(part)
                    cost_parts.append(c)
                    keep_parts.append(~ok)
                evaluated += sample.numel()
                state = _cat_states(new_parts)
                cost = torch.cat(cost_parts)
                keep = torch.cat(keep_parts) & (cost < best_cost[sample])
                idx = keep.nonzero().squeeze(1)
                sample, cost, state, prefix = sample[idx], cost[idx], state.rows(idx), prefix[idx]
    finally:
        model.train(was_training)
    solved = torch.isfinite(best_cost)
    return OraclePaths(
        paths=torch.where(solved.unsqueeze(1), best_path, torch.zeros_like(best_path)),
        cost=torch.where(solved, best_cost, torch.ones_like(best_cost)),
        solved=solved,
        evaluated=evaluated,
    )


def sequence_name(path: Sequence[int]) -> str:
    """A path's name: "NOP" for the plain path, else its layers, e.g. "L1,L3"."""
    steps = [f"L{int(a)}" for a in path if int(a) > 0]
    return ",".join(steps) if steps else "NOP"


def sequence_shares(paths: Tensor, difficulty: Tensor, top: int = 8) -> dict[int, dict[str, float]]:
    """Per difficulty level, the share of each sequence among ``paths`` (rows 0-padded): the ``top``
    most common by name, the rest together as "other"."""
    table: dict[int, dict[str, float]] = {}
    names = [sequence_name(row) for row in paths.tolist()]
    for level in sorted(set(difficulty.tolist())):
        chosen = [name for name, d in zip(names, difficulty.tolist()) if d == level]
        counts: dict[str, int] = {}
        for name in chosen:
            counts[name] = counts.get(name, 0) + 1
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        shares = {name: count / len(chosen) for name, count in ranked[:top]}
        rest = sum(count for _, count in ranked[top:])
        if rest:
            shares["other"] = rest / len(chosen)
        table[int(level)] = shares
    return table


def oracle(
    model: FPINetwork,
    splits: DatasetSplits,
    *,
    max_steps: int | None = None,
    min_confidence: float = 0.0,
    batch_size: int = 4096,
    device: str | torch.device = "cpu",
    reference: EvalReport | None = None,
) -> OracleReport:
    """For each test sample, the cheapest action sequence within the step budget that answers
    correctly (or the plain path, the cheapest of all, when none does) - knowing the label (see
    :func:`oracle_paths`)."""
    dev = resolve_device(device)
    L = model.num_layers
    T = max_steps if max_steps is not None else default_max_steps(L)
    y = splits.y_test.to(dev)
    found = oracle_paths(model, splits.x_test.to(dev), y, max_steps=T, min_confidence=min_confidence, batch_size=batch_size)
    length = (found.paths > 0).sum(dim=1)
    if reference is None:
        reference = evaluate_policy(model, splits, list(range(1, L + 1)), max_steps=T, device=dev)
    difficulty = splits.difficulty_test.to(dev) if splits.difficulty_test is not None else torch.full_like(y, -1)
    return OracleReport(
        accuracy=float(found.solved.float().mean()),
        compute=float(found.cost.mean()),
        compute_fraction=float(found.cost.mean()) / reference.fpi_all_compute,
        mean_episode_length=float(length.float().mean()),
        per_difficulty=per_level(found.solved, found.cost, difficulty),
        sequences_evaluated=found.evaluated,
        min_confidence=min_confidence,
        sequences_per_level=sequence_shares(found.paths, difficulty),
    )


def _cat_states(parts: list[PathState]) -> PathState:
    return PathState(torch.cat([p.u for p in parts]), [torch.cat([p.z[i] for p in parts]) for i in range(len(parts[0].z))])
