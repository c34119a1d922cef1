"""The settings of a training run, and how they are read from flags, a YAML file and a resumed run.

A run has three groups of settings, each a dataclass whose fields are the flags:

* :class:`RunSettings`: the run itself (budget, seeds, logging, checkpoints);
* :class:`~dynalay_env.EnvConfig`: the environment, with the same defaults as ``gym.make``;
* the algorithm's own settings (e.g. :class:`~agents.sb3_agents.PPOSettings`), passed verbatim to
  the algorithm; ``None`` means the library's default.

Precedence: defaults < the saved config.json of ``--resume`` < ``--config`` YAML < explicit flags.
:func:`resolve` peeks at ``--resume``/``--config``/``--algo`` (they decide which flags exist and their
defaults), layers the files over the defaults, then parses every flag once with argparse.

Why argparse and not a dataclass-CLI library: tyro and jsonargparse (both in the registry) would turn
these dataclasses into flags too, but would change the help, the error messages that users and tests
rely on, and the defaults < config.json < YAML < flags layering with its unknown-key hints; keeping
argparse keeps all of that identical at no new dependency.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from dynalay_env import EnvConfig
from dynalay_env.config import setting


@dataclass
class RunSettings:
    algo: str = setting("ppo", "learning algorithm", choices=("ppo", "a2c", "dqn", "reinforce"))
    total_timesteps: int = setting(24_576, "environment steps to train for")
    num_envs: int = setting(16, "episodes in flight in the batched engine")
    seed: int = setting(1, "seed of the main model, the episode sampler and the agent")
    device: str = setting("auto", "cpu, cuda, cuda:N or auto")
    threads: int = setting(1, "torch CPU threads (0: torch's default); the small models here run fastest on 1")
    reward_weight: float = setting(0.2, "the paper's gamma: weight of the reward in the agent's loss (Eq. 3)")
    imitation_samples: int = setting(
        2000, "before RL, fit the policy to the oracle's cheapest confident actions on this many train samples (0: RL from a random policy)"
    )
    imitation_epochs: int = setting(30, "epochs of the imitation warm-start's fit")
    imitation_every: int = setting(
        8192,
        "refit the policy to the oracle's sequences on the current co-trained main model every "
        "this many steps, between the algorithm's updates (0: only before RL); the oracle's "
        "sequences change as co-training changes the model",
    )
    eval_freq: int = setting(0, "evaluate on the test split every this many steps (0: only at the end)")
    checkpoint_freq: int = setting(10_000, "write checkpoint.pt every this many steps (0: only at the end)")
    log_every: int = setting(2048, "log training charts every this many steps")
    detail_every: int = setting(
        10240,
        "evaluate every fixed path (paths/accuracy/*) and draw charts/decisions every this many steps and at the end (dearer than --log-every)",
    )
    run_name: str | None = setting(None, "run directory name under --logdir (default <algo>-<dataset>-s<seed>-<time>)")
    logdir: str = setting("runs", "parent directory of run directories")
    progress: bool = setting(True, "show progress bars")


GROUPS = ("run", "env", "agent")
RUN_OWNED_ENV = ("seed", "progress")
"""Environment settings a run sets from its own flags (--seed, --progress)."""
_CONTROL = ("resume", "config", "overwrite")


@dataclass
class ResolvedSettings:
    run: RunSettings
    env: EnvConfig
    agent: Any
    resume: Path | None = None
    overwrite: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"algo": self.run.algo, "run": _jsonable(self.run), "env": _jsonable(self.env), "agent": _jsonable(self.agent)}


def _jsonable(obj: Any) -> dict[str, Any]:
    return {f.name: (list(v) if isinstance(v := getattr(obj, f.name), tuple) else v) for f in fields(obj)}


def parse_pair(text: str, name: str = "value") -> tuple[float, float]:
    try:
        low, high = (float(v) for v in str(text).split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{name} must be 'low,high', got {text!r}") from None
    return low, high


def _field_type(cls: type, name: str) -> tuple[Any, bool]:
    """The field's type without ``None``, and whether it may be ``None``."""
    hint = typing.get_type_hints(cls)[name]
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return hint, False


def _is_name_list(kind: Any) -> bool:
    return typing.get_origin(kind) is tuple and typing.get_args(kind) == (str, Ellipsis)


def parse_names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in str(text).split(",") if part.strip())


def _converter(cls: type, name: str) -> Callable[[str], Any]:
    kind, optional = _field_type(cls, name)
    if _is_name_list(kind):
        base: Callable[[str], Any] = parse_names
    elif typing.get_origin(kind) is tuple:

        def base(text: str) -> tuple[float, float]:
            return parse_pair(text, "--" + name.replace("_", "-"))
    else:
        base = {int: int, float: float, str: str}[kind]

    def convert(text: str) -> Any:
        if optional and text.lower() in ("none", "default"):
            return None
        return base(text)

    convert.__name__ = getattr(kind, "__name__", str(kind))  # argparse names the type in its errors
    return convert


def _add_group(parser: argparse.ArgumentParser, title: str, cls: type, defaults: dict[str, Any], skip: Sequence[str] = ()) -> None:
    group = parser.add_argument_group(title)
    for f in fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        kind, _ = _field_type(cls, f.name)
        if kind is bool:
            group.add_argument(flag, default=defaults[f.name], action=argparse.BooleanOptionalAction, help=help_text)
        else:
            choices = f.metadata.get("choices")
            group.add_argument(
                flag,
                default=defaults[f.name],
                type=_converter(cls, f.name),
                choices=choices,
                help=help_text,
                metavar=None if choices else f.name.upper(),
            )


def _coerce(cls: type, name: str, value: Any, source: str) -> Any:
    """A value from YAML or JSON into the field's type, refused by name when it does not fit."""
    kind, optional = _field_type(cls, name)
    if value is None:
        if optional:
            return None
        raise SystemExit(f"error: {source}: {name} cannot be null")
    if _is_name_list(kind):
        if isinstance(value, str):
            return parse_names(value)
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise SystemExit(f"error: {source}: {name} must be comma-separated names or a list of names, got {value!r}")
    if typing.get_origin(kind) is tuple:
        if isinstance(value, str):
            try:
                return parse_pair(value, name)
            except argparse.ArgumentTypeError as err:
                raise SystemExit(f"error: {source}: {err}") from None
        if isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_number(v) for v in value):
            return float(value[0]), float(value[1])
        raise SystemExit(f"error: {source}: {name} must be 'low,high' or a list of two numbers, got {value!r}")
    if kind is bool and isinstance(value, bool):
        return value
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is float and _is_number(value):
        return float(value)
    if kind is str and isinstance(value, str):
        return value
    raise SystemExit(f"error: {source}: {name} must be {getattr(kind, '__name__', kind)}, got {type(value).__name__} {value!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _read_yaml(path: str) -> dict[str, Any]:
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as err:
        raise SystemExit(f"error: cannot read --config {path}: {err.strerror}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise SystemExit(f"error: --config {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise SystemExit(f"error: --config {path} must hold a mapping of flag names to values")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _read_saved(run_dir: Path) -> dict[str, Any]:
    saved = run_dir / "config.json"
    if not saved.is_file():
        raise SystemExit(f"error: --resume {run_dir}: no config.json there (is it a run directory?)")
    try:
        data = json.loads(saved.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SystemExit(f"error: --resume {run_dir}: config.json is unreadable: {err}") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(g), dict) for g in GROUPS):
        raise SystemExit(f"error: --resume {run_dir}: config.json is not a DynaLay run configuration")
    return {k: v for g in GROUPS for k, v in data[g].items()}


def resolve(
    argv: Sequence[str] | None,
    algorithms: dict[str, type],
    forced: dict[str, Any] | None = None,
    description: str = "",
) -> ResolvedSettings:
    """Read the run, environment and algorithm settings from ``argv`` (see the module docstring).

    ``algorithms`` maps each algorithm name to its settings dataclass; ``forced`` fixes settings
    (``train_ppo.py`` forces ``algo``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    forced = dict(forced or {})
    # --resume, --config and --algo decide which flags exist and what they default to, so they are peeked at first
    peek = argparse.ArgumentParser(add_help=False)
    _add_control(peek)
    peek.add_argument("--algo", choices=list(algorithms))
    known, _ = peek.parse_known_args(argv)
    layered = {**(_read_saved(known.resume) if known.resume else {}), **(_read_yaml(known.config) if known.config else {})}
    if forced.get("algo") and known.algo and known.algo != forced["algo"]:
        raise SystemExit(f"error: this script trains {forced['algo']}; for --algo {known.algo} use agents/train.py --algo {known.algo}")
    algo = forced.get("algo") or known.algo or layered.get("algo") or RunSettings.algo
    source = known.config or (f"--resume {known.resume}" if known.resume else "")
    if algo not in algorithms:
        raise SystemExit(f"error: {known.config or known.resume}: unknown algorithm {algo!r}; choose one of {', '.join(algorithms)}")
    classes = _classes(algorithms[algo])
    owner = {f.name: g for g, cls in classes.items() for f in fields(cls) if not (g == "env" and f.name in RUN_OWNED_ENV)}
    defaults = {name: getattr(classes[g], name) for name, g in owner.items()}
    for key, value in layered.items():
        if key in _CONTROL:
            raise SystemExit(f"error: --config {known.config}: {key!r} is a command-line flag only")
        if key not in owner:
            others = _owners_elsewhere(key, algorithms)
            raise SystemExit(f"error: {source}: unknown key {key!r}" + (f" (it is a setting of {others}, not {algo})" if others else ""))
        defaults[key] = _coerce(classes[owner[key]], key, value, source)

    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_control(parser)
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the run directory if it exists (without it, an existing one is refused)"
    )
    _add_group(parser, "run", RunSettings, defaults)
    _add_group(parser, "environment (gym.make's keyword arguments)", EnvConfig, defaults, skip=RUN_OWNED_ENV)
    _add_group(parser, f"{algo} (passed verbatim to the algorithm; none = the library's default)", classes["agent"], defaults)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        flag = unknown[0].split("=")[0]
        others = _owners_elsewhere(flag.lstrip("-").replace("-", "_"), algorithms)
        parser.error(f"unrecognized arguments: {' '.join(unknown)}" + (f" ({flag} is a setting of {others}, not {algo})" if others else ""))
    values = {**vars(args), **forced, "algo": algo}
    try:
        run = RunSettings(**{f.name: values[f.name] for f in fields(RunSettings)})
        env = EnvConfig(
            **{f.name: values[f.name] for f in fields(EnvConfig) if f.name not in RUN_OWNED_ENV}, seed=run.seed, progress=run.progress
        )
        agent = classes["agent"](**{f.name: values[f.name] for f in fields(classes["agent"])})
    except (TypeError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    if values["resume"] is not None and values["overwrite"]:
        parser.error("--resume continues a run and --overwrite replaces one: give one of them")
    return ResolvedSettings(run, env, agent, values["resume"], bool(values["overwrite"]))


def _add_control(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resume", type=Path, default=None, help="run directory to resume from its checkpoint")
    parser.add_argument("--config", default=None, help="YAML file with the same keys as these flags; explicit flags override it")


def _classes(agent_cls: type) -> dict[str, type]:
    return {"run": RunSettings, "env": EnvConfig, "agent": agent_cls}


def _owners_elsewhere(name: str, algorithms: dict[str, type]) -> str:
    """The algorithms that have a setting ``name``, for the hint when another algorithm was chosen."""
    return ", ".join(algo for algo, cls in algorithms.items() if name in {f.name for f in fields(cls)})


def settings_from_json(data: dict[str, Any], algorithms: dict[str, type]) -> ResolvedSettings:
    """The settings a run saved in its config.json."""
    algo = data.get("algo")
    if algo not in algorithms or not all(isinstance(data.get(g), dict) for g in GROUPS):
        raise ValueError(f"not a DynaLay run configuration (algo {algo!r})")
    built: dict[str, Any] = {}
    for group, cls in _classes(algorithms[algo]).items():  # "effective_agent", written beside them, is a record, not a setting
        extra = set(data[group]) - {f.name for f in fields(cls)}
        if extra:
            raise ValueError(f"config.json {group} has unknown settings {sorted(extra)}")
        built[group] = cls(**{k: _coerce(cls, k, v, "config.json") for k, v in data[group].items()})
    return ResolvedSettings(built["run"], built["env"], built["agent"])
