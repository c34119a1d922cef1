"""The one way an environment's engine is built, with its main model's warm-up and the warm-up cache.

``gym.make``, every face, ``agents/train.py``, the distributed entry point and the benchmarks call
:func:`make_engine`. It loads the data, builds (or takes) the main model, loads a saved one, and
hands the warm-up to :func:`prepare_main_model`, which trains it on random paths or loads the
result of an identical earlier warm-up from the cache.

The cache. A warm-up is keyed by everything that decides its result: the settings it reads, the
step budget, the data's contents, the freshly initialised weights, the source of ``main_models``
(and of a registered model's module), the device type and torch's version. The first build of a key
trains and stores it (atomically, weights only); later builds in any process load it, under a file
lock so that N envs built at once, in one process or in subprocesses, share one warm-up. The warm-up
draws only from its own seeded generator, so a loaded warm-up leaves the process exactly as a
trained one would. ``$DYNALAY_CACHE_DIR`` moves the cache (default ``$XDG_CACHE_HOME/dynalay`` or
``~/.cache/dynalay``); ``warmup_cache="off"`` or ``DYNALAY_WARMUP_CACHE=0`` turns it off.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from filelock import FileLock

from main_models import (
    TRAINING_GRADS,
    DatasetSplits,
    EpochProgress,
    FPINetwork,
    MainModelTrainer,
    UnsafeFileError,
    build_main_model,
    default_model,
    load_dataset,
    load_tensors,
    resolve_device,
    save_tensors,
)

from .config import EnvConfig, default_max_steps
from .engine import DynaLayEngine, outside_inference_mode

MAIN_MODEL_KIND = "dynalay-main-model"
MAIN_MODEL_VERSION = 1
WARMUP_KIND = "dynalay-warmup"
WARMUP_VERSION = 1
CACHE_DIR_ENV = "DYNALAY_CACHE_DIR"
CACHE_SWITCH_ENV = "DYNALAY_WARMUP_CACHE"
CACHE_OFF = ("0", "off", "false", "no")
WarmupSource = Literal["none", "trained", "cached"]


# ---- the main model -----------------------------------------------------------------------------
def new_main_model(config: EnvConfig, splits: DatasetSplits) -> FPINetwork:
    """A freshly initialised main model for ``splits``, its weights drawn from ``config.seed`` alone
    (the caller's global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return build_main_model(splits, model=config.model)


def export_main_model(engine: DynaLayEngine, path: str | Path) -> Path:
    """Write the engine's main model, with what it is, to ``path`` (weights only, atomically), for
    ``gym.make("DynaLay-v0", main_model=path)``."""
    return save_tensors(
        path,
        {
            "kind": MAIN_MODEL_KIND,
            "version": MAIN_MODEL_VERSION,
            "dataset": engine.splits.name,
            "model": engine.model_name,
            "num_layers": engine.num_layers,
            "max_steps": engine.max_steps,
            "weights": engine.model.state_dict(),
        },
    )


def load_main_model(path: str | Path, model: FPINetwork, splits: DatasetSplits) -> None:
    """Load the weights of a file written by :func:`export_main_model` into ``model``, refusing
    (before running any of it) a file that is unsafe, of another kind, or whose weights do not fit."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"main_model {path} does not exist")
    payload = load_tensors(path, "main model")
    if payload.get("kind") != MAIN_MODEL_KIND or payload.get("version") != MAIN_MODEL_VERSION:
        raise ValueError(f"main_model {path} is not a DynaLay main-model file of version {MAIN_MODEL_VERSION}")
    try:
        model.load_state_dict(payload["weights"])
    except RuntimeError as err:
        raise ValueError(
            f"main_model {path} ({payload['model']} with {payload['num_layers']} layers, trained on {payload['dataset']!r}) does not "
            f"fit this environment's main model for {splits.name!r}: {str(err).splitlines()[0]}"
        ) from None


# ---- the warm-up cache --------------------------------------------------------------------------
def cache_directory(setting: str | None) -> Path | None:
    """Where warm-ups are cached for the ``warmup_cache`` setting: a directory it names, the user's
    cache directory for ``None`` (unless ``DYNALAY_WARMUP_CACHE`` turns it off), or no cache."""
    if setting is not None:
        return None if setting.lower() in CACHE_OFF else Path(setting).expanduser()
    if os.environ.get(CACHE_SWITCH_ENV, "1").strip().lower() in CACHE_OFF:
        return None
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dynalay"


def _digest(*parts: bytes) -> str:
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


def _tensor_bytes(t: torch.Tensor) -> bytes:
    return str((tuple(t.shape), t.dtype)).encode() + t.detach().cpu().contiguous().numpy().tobytes()


def _source_digest(model: FPINetwork) -> str:
    """The code a warm-up ran: every ``main_models`` module, and the module that defines the model's
    class (a registered model lives outside the package)."""
    import main_models

    files = sorted(Path(main_models.__file__).parent.rglob("*.py"))
    module = sys.modules.get(type(model).__module__)
    extra = inspect.getsourcefile(module) if module is not None else None
    if extra and Path(extra) not in files:
        files.append(Path(extra))
    return _digest(*(f.read_bytes() for f in files if f.is_file()))


def warmup_key(config: EnvConfig, splits: DatasetSplits, model: FPINetwork, trainer: MainModelTrainer, *, max_steps: int) -> dict[str, Any]:
    """Everything that decides a warm-up's result. ``model`` must be freshly initialised."""
    device = trainer.device
    settings = {
        k: (list(v) if isinstance(v, tuple) else v)
        for k, v in asdict(config).items()
        if k
        in (
            "dataset",
            "model",
            "seed",
            "pretrain_epochs",
            "warmup_stop_prob",
            "main_lr",
            "cotrain_every",
            "train_alternatives",
            "fpi_solver",
            "main_grad",
        )
    }
    return {
        "kind": WARMUP_KIND,
        "version": WARMUP_VERSION,
        **settings,
        "max_steps": max_steps,
        "device": device.type,
        "trainer": type(trainer).__qualname__,
        "torch": str(torch.__version__),
        "data": _digest(*(_tensor_bytes(t) for t in (splits.x_train, splits.y_train))),
        "initial_weights": _digest(*(name.encode() + _tensor_bytes(t) for name, t in model.state_dict().items())),
        "code": _source_digest(model),
    }


def _cache_path(directory: Path, key: dict[str, Any]) -> Path:
    name = Path(str(key["dataset"])).name.replace(".npz", "")
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return directory / f"warmup-{name}-s{key['seed']}-e{key['pretrain_epochs']}-{digest}.pt"


def _load_cached(path: Path, key: dict[str, Any], trainer: MainModelTrainer) -> None:
    try:
        payload = load_tensors(path, "warm-up cache", map_location=trainer.device)
    except UnsafeFileError as err:
        raise ValueError(f"{err} (delete the file to warm up again)") from None
    if payload.get("key") != key or not {"model", "trainer"} <= set(payload):
        raise ValueError(f"warm-up cache {path} does not hold this warm-up (delete the file to warm up again)")
    trainer.model.load_state_dict(payload["model"])
    trainer.load_state_dict(payload["trainer"])


# ---- the warm-up ---------------------------------------------------------------------------------
def prepare_main_model(
    trainer: MainModelTrainer,
    config: EnvConfig,
    splits: DatasetSplits,
    *,
    max_steps: int,
    progress: bool = True,
    resume: EpochProgress | None = None,
    on_epoch: Callable[[EpochProgress], None] | None = None,
    replicas: Callable[[bool], bool] | None = None,
    store: bool = True,
) -> WarmupSource:
    """Warm the trainer's (freshly initialised) main model up for ``config.pretrain_epochs`` epochs on
    random paths (paper 4.4), or load the identical warm-up from the cache. Returns where it came from.

    ``resume`` continues a warm-up stopped after an epoch (``on_epoch`` is called after each one, e.g.
    to checkpoint); a resumed warm-up is stored in the cache when it ends like any other.

    Data-parallel replicas warm up together (every update is a collective), so one replica cannot
    wait on another's lock: they pass ``replicas``, which returns True on every replica only if it
    is True on every one; they then load the cache only if all of them find it, else all train, and
    only the replica passed ``store=True`` writes the result (and says what it is doing)."""
    epochs = config.pretrain_epochs
    if not epochs:
        return "none"
    directory = cache_directory(config.warmup_cache)

    def train() -> None:
        trainer.warm_up(
            epochs,
            max_steps=max_steps,
            stop_prob=config.warmup_stop_prob,
            seed=config.seed,
            progress=progress and config.progress,
            resume=resume,
            on_epoch=on_epoch,
        )

    if directory is not None:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:  # a read-only home must not stop an environment from being built
            print(
                f"DynaLay: cannot use the warm-up cache {directory} ({err.strerror or err}); warming up without it",
                file=sys.stderr,
                flush=True,
            )
            directory = None
    if directory is None:
        train()
        return "trained"
    # the key names the fresh model; a resumed warm-up's model is part-trained, so rebuild the fresh one
    fresh = trainer.model if resume is None else new_main_model(config, splits)
    key = warmup_key(config, splits, fresh, trainer, max_steps=max_steps)
    path = _cache_path(directory, key)

    def train_and_store() -> WarmupSource:
        if resume is None and store:
            print(
                f"DynaLay: warming up the {key['model'] or 'default'} main model on {key['dataset']} ({epochs} epochs; "
                f"pretrain_epochs=N shortens it, 0 skips it) and caching it in {path} (warmup_cache='off' or "
                f"{CACHE_SWITCH_ENV}=0 turns the cache off)",
                file=sys.stderr,
                flush=True,
            )
        start = time.perf_counter()
        train()
        if store:
            save_tensors(
                path,
                {
                    "kind": WARMUP_KIND,
                    "key": key,
                    "model": trainer.model.state_dict(),
                    "trainer": trainer.state_dict(),
                    "seconds": time.perf_counter() - start,
                },
            )
        return "trained"

    if replicas is not None:
        if replicas(path.is_file()):
            _load_cached(path, key, trainer)
            return "cached"
        return train_and_store()
    # the first process to take the lock warms up; the others wait for it and load its result
    with FileLock(str(path) + ".lock"):
        if path.is_file():
            _load_cached(path, key, trainer)
            return "cached"
        return train_and_store()


def make_trainer(
    config: EnvConfig, model: FPINetwork, splits: DatasetSplits, *, max_steps: int, trainer_type: type[MainModelTrainer] = MainModelTrainer
) -> MainModelTrainer:
    """The trainer of ``model`` (warm-up and co-training) with ``config``'s settings."""
    return trainer_type(
        model,
        splits.x_train,
        splits.y_train,
        lr=config.main_lr,
        cotrain_every=config.cotrain_every,
        alternatives=config.train_alternatives,
        max_steps=max_steps,
        seed=config.seed,
    )


# ---- the engine ----------------------------------------------------------------------------------
@outside_inference_mode
def make_engine(
    config: EnvConfig,
    num_envs: int = 1,
    *,
    mode: str = "train",
    autoreset: bool = True,
    device: str | torch.device = "cpu",
    data: DatasetSplits | None = None,
    network: FPINetwork | None = None,
    warm_up: bool = True,
    progress: bool = True,
    trainer_type: type[MainModelTrainer] = MainModelTrainer,
) -> DynaLayEngine:
    """The engine for ``config``: ``num_envs`` episodes over its data and main model on ``device``.

    ``data`` and ``network`` replace the dataset ``config`` names and a freshly built main model
    (e.g. to evaluate a trained one; ``config.model`` then only names it). In train mode the engine gets a
    :class:`~main_models.MainModelTrainer` that co-trains the main model (unless ``config.cotrain``
    is off), and a fresh model is first warmed up (:func:`prepare_main_model`) unless ``warm_up`` is
    off (the caller warms it up itself, e.g. to checkpoint every epoch). ``progress=False`` silences
    the warm-up's bar whatever ``config.progress`` says. ``trainer_type`` is the trainer's class
    (e.g. :class:`~main_models.DistributedMainModelTrainer`)."""
    dev = resolve_device(device)
    splits = (data if data is not None else load_dataset(config.dataset, config.data_dir, seed=0)).to(dev)
    fresh = network is None
    network = (new_main_model(config, splits) if fresh else network).to(dev)
    model_name = config.model or default_model(splits)
    network.configure_solver(config.fpi_solver, grad=config.main_grad or TRAINING_GRADS[model_name])
    if config.main_model is not None:
        load_main_model(config.main_model, network, splits)
    max_steps = config.max_steps if config.max_steps is not None else default_max_steps(network.num_layers)
    warms_up = mode == "train" and warm_up and fresh and config.main_model is None and bool(config.pretrain_epochs)
    trainer = None
    if mode == "train" and (config.cotrain or warms_up):
        trainer = make_trainer(config, network, splits, max_steps=max_steps, trainer_type=trainer_type)
    if warms_up:
        prepare_main_model(trainer, config, splits, max_steps=max_steps, progress=progress)
    return DynaLayEngine(
        num_envs,
        splits,
        network,
        reward=config.reward,
        max_steps=max_steps,
        mode=mode,
        trainer=trainer if config.cotrain else None,
        autoreset=autoreset,
        observation=config.observation,
        seed=config.seed,
        device=dev,
        model_name=model_name,
    )


def build_engine(
    num_envs: int = 1,
    *,
    mode: str = "train",
    autoreset: bool = True,
    device: str | torch.device = "cpu",
    progress: bool = True,
    **settings: Any,
) -> DynaLayEngine:
    """:func:`make_engine` from the flat keyword settings of :class:`EnvConfig` (what ``gym.make``
    passes)."""
    return make_engine(EnvConfig(**settings), num_envs, mode=mode, autoreset=autoreset, device=device, progress=progress)
