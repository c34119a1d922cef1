"""Three faces of one :class:`~dynalay_env.engine.DynaLayEngine`.

* :class:`DynaLayEnv` - single-sample ``gymnasium.Env`` (``gym.make("DynaLay-v0")``).
* :class:`DynaLayVectorEnv` - natively batched ``gymnasium.vector.VectorEnv`` with same-step
  autoreset (``gym.make_vec("DynaLay-v0", num_envs=N, vectorization_mode="vector_entry_point")``).
* :class:`DynaLaySB3VecEnv` - stable-baselines3 ``VecEnv`` over the same engine.

Each face either builds its engine from the settings of :class:`~dynalay_env.config.EnvConfig`, or
adapts one it is given (``DynaLaySB3VecEnv(engine)``). Each converts actions and results between
numpy and the engine's tensors once per batched step, and nothing else.
"""

from __future__ import annotations

import time
from typing import Any, Iterable, Sequence

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices

from .config import EnvConfig
from .engine import DynaLayEngine, StepOutput
from .make import export_main_model, make_engine


def _engine(engine: DynaLayEngine | None, num_envs: int, autoreset: bool, settings: dict[str, Any]) -> tuple[DynaLayEngine, str | None]:
    """The given engine, checked to fit the face, or a new one built from ``settings`` (EnvConfig's
    fields, plus ``device``, ``mode`` and ``data``: loaded :class:`~main_models.DatasetSplits`); and
    where to write the main model when the face is closed (``save_main_model``)."""
    if engine is None:
        build = {k: settings.pop(k) for k in ("device", "mode", "data") if k in settings}
        if build.get("data") is not None:  # loaded data: its name is the dataset's
            settings.setdefault("dataset", build["data"].name)
        config = EnvConfig(**settings)
        return make_engine(config, num_envs, autoreset=autoreset, **build), config.save_main_model
    if settings:
        raise TypeError(f"pass either an engine or settings to build one, not both (got {sorted(settings)})")
    if engine.num_envs != num_envs or engine.autoreset != autoreset:
        raise ValueError(
            f"this face needs an engine with num_envs={num_envs} and autoreset={autoreset}, "
            f"got num_envs={engine.num_envs} and autoreset={engine.autoreset}"
        )
    return engine, None


def _close(engine: DynaLayEngine, save_main_model: str | None) -> None:
    if save_main_model:
        export_main_model(engine, save_main_model)


def _spaces(engine: DynaLayEngine) -> tuple[spaces.Box, spaces.Discrete]:
    low, high = engine.observation_bounds()
    return spaces.Box(low, high, dtype=np.float32), spaces.Discrete(engine.num_layers + 1)


def _host_actions(actions: Any, engine: DynaLayEngine) -> np.ndarray:
    """Validate actions on the host (no device sync) and return them as int64 (N,). The rule is the
    engine's (:meth:`DynaLayEngine.validate_actions`): integers in [0, L]; a float, bool or complex
    dtype is refused even when its values are whole numbers, as Gymnasium's ``Discrete`` does."""
    arr = np.asarray(actions)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.shape != (engine.num_envs,):
        raise ValueError(f"expected {engine.num_envs} action(s), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"actions must be integers in [0, {engine.num_layers}], got dtype {arr.dtype}: {arr!r}")
    arr = arr.astype(np.int64)
    bad = (arr < 0) | (arr > engine.num_layers)
    if bad.any():
        raise ValueError(f"action {int(arr[bad][0])} out of range: valid actions are 0 (NOP) to {engine.num_layers} (FPI on layer i)")
    return arr


def _np(t: torch.Tensor) -> np.ndarray:
    """A host copy the caller owns (``.cpu()`` alone aliases the engine's buffers on CPU)."""
    return t.detach().to("cpu", copy=True).numpy()


class DynaLayEnv(gym.Env):
    """One DynaLay episode at a time. Keyword arguments are :class:`EnvConfig` settings, or
    ``engine=`` a one-row engine built without autoreset.

    ``info`` keys, each with one dtype wherever it appears: at reset ``lam`` (float32), ``label``
    and ``difficulty`` (int64); at every step ``step_cost`` (float32), ``fpi_iterations`` and
    ``steps`` (int64); at the episode's end also the record's keys
    (:data:`~dynalay_env.record.EPISODE_FIELDS`; ``correct`` is a Python bool).
    """

    metadata = {"render_modes": []}

    def __init__(self, render_mode: str | None = None, *, engine: DynaLayEngine | None = None, **settings: Any) -> None:
        if render_mode is not None:
            raise ValueError(f"DynaLay-v0 has no render modes, got render_mode={render_mode!r}")
        if "num_envs" in settings:
            raise TypeError(
                "num_envs is not a setting of the single-sample env: for N episodes at once use "
                "gym.make_vec('DynaLay-v0', num_envs=N, vectorization_mode='vector_entry_point')"
            )
        self.engine, self._save_main_model = _engine(engine, 1, False, settings)
        self.observation_space, self.action_space = _spaces(self.engine)
        self.render_mode = None
        self._needs_reset = True

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        if seed is not None:
            self.engine.seed(seed)
        obs = self.engine.reset()
        self._needs_reset = False
        engine = self.engine
        info = {
            "lam": np.float32(engine.lam_row[0]),
            "label": np.int64(engine.label[0]),
            "difficulty": np.int64(engine.difficulty_all[engine.sample[0]]),
        }
        return _np(obs[0]), info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self._needs_reset:
            raise RuntimeError("the episode has ended (or never started): call reset() first")
        act = _host_actions(action, self.engine)
        out = self.engine.step(torch.from_numpy(act), validate=False)
        terminated = bool(out.terminated[0])
        info: dict[str, Any] = {
            "step_cost": np.float32(out.step_cost[0]),
            "fpi_iterations": np.int64(out.step_iterations[0]),
            "steps": np.int64(self.engine.steps[0]),
        }
        obs = _np(out.obs[0])
        if terminated:
            self._needs_reset = True
            (episode,) = out.finished.info_dicts()
            info.update(episode)
            info["correct"] = bool(episode["correct"])
            obs = _np(out.final_obs[0])
        return obs, float(out.reward[0]), terminated, False, info

    def action_masks(self) -> np.ndarray:
        """Which actions the MDP allows now, bool (L+1,): every one while the episode runs (the
        interface sb3-contrib's MaskablePPO looks for)."""
        return _np(self.engine.action_masks()[0])

    def close(self) -> None:
        _close(self.engine, self._save_main_model)


class DynaLayVectorEnv(VectorEnv):
    """N episodes on the batched engine, in any of Gymnasium's autoreset modes.

    * ``SAME_STEP`` (default): a finished row starts its next episode in the same step; the step
      returns the new observation, and the finished episode's observation and record in
      ``final_obs`` / ``final_info`` (what SB3-style loops expect).
    * ``NEXT_STEP``: the step that ends an episode returns its last observation and its record as
      plain info keys; the next step resets that row (its action is ignored, reward 0) and returns
      the new observation (what Gymnasium's vector wrappers such as ``NormalizeObservation`` need).
    * ``DISABLED``: finished rows stay idle (no compute, reward 0) until
      ``reset(options={"reset_mask": mask})`` starts them again.

    Request a mode with ``gym.make_vec(..., vectorization_mode="vector_entry_point",
    autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)`` (or its string value). With
    ``torch_arrays=True`` observations, rewards, flags and infos are torch tensors on the engine's
    device and actions may be a tensor: an on-device agent then never round-trips through numpy.
    """

    metadata = {"render_modes": [], "autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(
        self,
        num_envs: int = 1,
        render_mode: str | None = None,
        torch_arrays: bool = False,
        *,
        autoreset_mode: AutoresetMode | str = AutoresetMode.SAME_STEP,
        engine: DynaLayEngine | None = None,
        **settings: Any,
    ) -> None:
        if render_mode is not None:
            raise ValueError(f"DynaLay-v0 has no render modes, got render_mode={render_mode!r}")
        try:
            mode = AutoresetMode(autoreset_mode)
        except ValueError:
            raise ValueError(f"autoreset_mode must be one of {[m.value for m in AutoresetMode]}, got {autoreset_mode!r}") from None
        self.torch_arrays = torch_arrays
        n = engine.num_envs if engine is not None else num_envs
        self.engine, self._save_main_model = _engine(engine, n, mode == AutoresetMode.SAME_STEP, settings)
        self.num_envs = self.engine.num_envs
        self.metadata = {**type(self).metadata, "autoreset_mode": mode}
        self.single_observation_space, self.single_action_space = _spaces(self.engine)
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.render_mode = None
        self._pending = torch.zeros(self.num_envs, dtype=torch.bool, device=self.engine.device)
        """NEXT_STEP: rows whose episode ended in the last step, reset at the next one."""

    @property
    def autoreset_mode(self) -> AutoresetMode:
        return self.metadata["autoreset_mode"]

    def reset(self, *, seed: int | Sequence[int] | None = None, options: dict | None = None) -> tuple[Any, dict]:
        if seed is not None:
            first = seed[0] if isinstance(seed, (list, tuple)) else seed
            self.engine.seed(int(first))
        self._np_random_seed = seed
        rows = None
        if options and "reset_mask" in options:
            mask = options["reset_mask"]
            mask = mask.cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
            if mask.shape != (self.num_envs,) or mask.dtype != np.bool_:
                raise ValueError(f"reset_mask must be a bool array of shape ({self.num_envs},), got {mask.dtype} of shape {mask.shape}")
            if self.engine.state is None and not mask.all():
                raise ValueError("the first reset must start every env: call reset() without a reset_mask first")
            rows = torch.from_numpy(np.flatnonzero(mask)).to(self.engine.device)
        obs = self.engine.reset(rows)
        if rows is None:
            self._pending.zero_()
        else:
            self._pending[rows] = False
        return (obs.clone() if self.torch_arrays else _np(obs)), {}

    def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict]:
        if isinstance(actions, torch.Tensor):
            self.engine.validate_actions(actions)
        else:
            actions = torch.from_numpy(_host_actions(actions, self.engine))
        restart = None
        if self.autoreset_mode == AutoresetMode.NEXT_STEP and bool(self._pending.any()):
            restart = self._pending.nonzero().squeeze(1)
            self.engine.reset(restart)
        out = self.engine.step(actions, validate=False, active=None if restart is None else ~self._pending)
        if self.autoreset_mode == AutoresetMode.NEXT_STEP:
            self._pending = out.terminated.clone()
        return self._torch_result(out) if self.torch_arrays else self._numpy_result(out)

    def action_masks(self) -> Any:
        """Which actions each row may take, bool (N, L+1): all of them while its episode runs."""
        masks = self.engine.action_masks()
        if self.autoreset_mode == AutoresetMode.NEXT_STEP:
            masks[self._pending] = True  # these rows start a new episode at the next step
        return masks if self.torch_arrays else _np(masks)

    def _numpy_result(self, out: StepOutput) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        terminated = _np(out.terminated)
        everyone = np.ones(self.num_envs, dtype=bool)
        infos: dict[str, Any] = {
            "step_cost": _np(out.step_cost),
            "_step_cost": everyone,
            "fpi_iterations": _np(out.step_iterations),
            "_fpi_iterations": everyone,
        }
        done_idx = np.flatnonzero(terminated)
        if done_idx.size:
            record = out.finished.scatter(done_idx, self.num_envs, as_numpy=True)
            if self.autoreset_mode == AutoresetMode.SAME_STEP:
                final_obs = np.full(self.num_envs, None, dtype=object)
                final_obs[done_idx] = list(_np(out.final_obs))
                infos.update({"final_obs": final_obs, "_final_obs": terminated, "final_info": record, "_final_info": terminated})
            else:
                infos.update(record)
        return _np(out.obs), _np(out.reward).astype(np.float64), terminated, _np(out.truncated), infos

    def _torch_result(self, out: StepOutput) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        done = out.terminated
        everyone = torch.ones_like(done)
        infos: dict[str, Any] = {
            "step_cost": out.step_cost,
            "_step_cost": everyone,
            "fpi_iterations": out.step_iterations,
            "_fpi_iterations": everyone,
        }
        if out.final_obs.shape[0]:
            rows = done.nonzero().squeeze(1)
            record = out.finished.scatter(rows, self.num_envs, as_numpy=False)
            if self.autoreset_mode == AutoresetMode.SAME_STEP:
                final_obs = torch.zeros_like(out.obs)
                final_obs[rows] = out.final_obs
                infos.update({"final_obs": final_obs, "_final_obs": done, "final_info": record, "_final_info": done})
            else:
                infos.update(record)
        return out.obs.clone(), out.reward, done, out.truncated, infos

    def close_extras(self, **kwargs: Any) -> None:
        _close(self.engine, self._save_main_model)


class DynaLaySB3VecEnv(VecEnv):
    """stable-baselines3 ``VecEnv`` over the batched engine (same-step reset, SB3's convention).

    ``DynaLaySB3VecEnv(engine)`` adapts an engine built with autoreset; ``DynaLaySB3VecEnv(N,
    **settings)`` builds one. Finished episodes carry ``terminal_observation`` plus the episode keys
    of :data:`~dynalay_env.record.EPISODE_FIELDS` in their info dict. ``path`` is always a (T,) array
    padded with 0 after the episode's ``steps`` actions, so infos batch cleanly.
    """

    def __init__(self, engine: DynaLayEngine | int = 1, **settings: Any) -> None:
        if isinstance(engine, DynaLayEngine):
            self.engine, self._save_main_model = _engine(engine, engine.num_envs, True, settings)
        else:
            self.engine, self._save_main_model = _engine(None, engine, True, settings)
        obs_space, act_space = _spaces(self.engine)
        self.render_mode = None
        super().__init__(self.engine.num_envs, obs_space, act_space)
        self._actions: np.ndarray | None = None
        self._start = time.perf_counter()

    def reset(self) -> np.ndarray:
        seed = self._seeds[0] if self._seeds and self._seeds[0] is not None else None
        if seed is not None:
            self.engine.seed(seed)
        self._reset_seeds()
        self._reset_options()
        return _np(self.engine.reset())

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = _host_actions(actions, self.engine)

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
        if self._actions is None:
            raise RuntimeError("step_wait() called without step_async()")
        out = self.engine.step(torch.from_numpy(self._actions), validate=False)
        self._actions = None
        dones = _np(out.terminated)
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        final_obs = _np(out.final_obs)
        for j, (i, episode) in enumerate(zip(np.flatnonzero(dones), out.finished.info_dicts())):
            # Monitor's episode statistics: the Eq. 2 return and the number of step() calls
            length = int(episode["steps"]) + (1 if episode["steps"] < self.engine.max_steps else 0)
            infos[i] = {
                "terminal_observation": final_obs[j],
                "TimeLimit.truncated": False,
                **episode,
                "episode": {"r": float(episode["return"]), "l": length, "t": time.perf_counter() - self._start},
            }
        return _np(out.obs), _np(out.reward).astype(np.float32), dones, infos

    def action_masks(self) -> np.ndarray:
        """Which actions each row may take, bool (N, L+1)."""
        return _np(self.engine.action_masks())

    def close(self) -> None:
        _close(self.engine, self._save_main_model)

    def _indices_count(self, indices: VecEnvIndices) -> int:
        return len(list(self._get_indices(indices)))

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """The face's own attribute, once per requested index (the rows share one engine)."""
        return [getattr(self, attr_name)] * self._indices_count(indices)

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        setattr(self, attr_name, value)

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any) -> list[Any]:
        """SB3 calls a method of each sub-env here. ``action_masks`` answers per row (as
        sb3-contrib's MaskablePPO expects); any other method of the face is called once and every
        requested index gets that result, since the rows share one engine."""
        rows = list(self._get_indices(indices))
        if method_name == "action_masks":
            masks = self.action_masks()
            return [masks[i] for i in rows]
        result = getattr(self, method_name)(*method_args, **method_kwargs)
        return [result] * len(rows)

    def env_is_wrapped(self, wrapper_class: type, indices: VecEnvIndices = None) -> list[bool]:
        """True for SB3's ``Monitor``: finished episodes already carry its ``episode`` statistics,
        so ``evaluate_policy`` reads them without a warning."""
        from stable_baselines3.common.monitor import Monitor

        return [issubclass(Monitor, wrapper_class)] * self._indices_count(indices)

    def get_images(self) -> Sequence[np.ndarray | None]:
        return [None] * self.num_envs

    def _get_indices(self, indices: VecEnvIndices) -> Iterable[int]:
        if indices is None:
            return range(self.num_envs)
        if isinstance(indices, int):
            return [indices]
        return indices
