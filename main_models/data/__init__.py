"""Datasets for the main models, as tensors with a fixed train/test split.

Every dataset loads into a :class:`DatasetSplits` through :func:`load_dataset`. Offline (bundled
or generated, no download; :mod:`.offline`):

* ``digits`` (default): scikit-learn's bundled 8x8 handwritten digits, flat -> MLP;
* ``digits-graded``: the same digits corrupted at a known level 0..4 per sample, flat -> MLP;
* ``parity``: variable-length bit strings, level = length bucket, tokens -> LSTM;
* ``grid-lookup``: token grids with a question in the corner, level = question kind, grid -> grid-LSTM;
* ``grid-reach``: grids of walls, is the corner reachable from a source, level = route shape, grid -> grid-LSTM.

From files under ``data_dir`` (default ``$DYNALAY_DATA_DIR`` or ``./data``), in their real format
(:mod:`.files`):

* ``cifar10`` / ``cifar100``: ``cifar-10-batches-py`` / ``cifar-100-python`` via torchvision
  (``download=True`` or ``DYNALAY_DOWNLOAD=1`` fetches them), images -> CNN;
* ``imdb``: the ``aclImdb`` directory, tokens -> LSTM;
* ``wikitext2``: ``wiki.{train,test}.tokens``, next-token prediction, tokens -> LSTM;
* a path ending in ``.npz``: a user's own arrays (see :func:`load_npz`).

A user's own dataset gets a name with :func:`register_dataset` (examples/own_task.py).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from .files import load_cifar10, load_cifar100, load_imdb, load_npz, load_wikitext2
from .grid_lookup import load_grid_lookup
from .grid_reach import load_grid_reach
from .offline import load_digits, load_digits_graded, load_parity
from .splits import INPUT_KINDS, DatasetSplits, infer_input_kind, split_indices

DATASETS: dict[str, Callable[..., DatasetSplits]] = {
    "digits": load_digits,
    "digits-graded": load_digits_graded,
    "parity": load_parity,
    "grid-lookup": load_grid_lookup,
    "grid-reach": load_grid_reach,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "imdb": load_imdb,
    "wikitext2": load_wikitext2,
}
"""Loaders by name; each is called as ``loader(data_dir, seed=seed, **options)``."""

OFFLINE_DATASETS: list[str] = ["digits", "digits-graded", "parity", "grid-lookup", "grid-reach"]
"""Datasets that need no files (bundled with scikit-learn or generated); :func:`register_dataset`
adds a user's (a list, updated in place, so that every importer sees them)."""
_BUILT_IN: tuple[str, ...] = tuple(DATASETS)


def _check_name(name: Any, what: str) -> str:
    """Refuse a registry name that flags, run names or load_dataset would misread."""
    if not isinstance(name, str) or not name.strip():
        raise TypeError(f"a {what} name must be a non-empty string, got {type(name).__name__} {name!r}")
    if name != name.strip() or any(c.isspace() or c in "/\\," for c in name):
        raise ValueError(f"{what} name {name!r} must not contain whitespace, commas or path separators (it is used in flags and run names)")
    return name


def _check_callable(function: Any, what: str, call: str, hint: str, *args: Any, **kwargs: Any) -> None:
    """Refuse at registration a callable that could not be called as ``call`` (``args``, ``kwargs``),
    rather than at its first use deep inside an environment."""
    if not callable(function):
        raise TypeError(f"{what} must be callable as {call}, got {type(function).__name__} {function!r}")
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # some builtins have none: they are checked when called
        return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as err:
        raise TypeError(
            f"{what} is called as {call}, which {getattr(function, '__name__', function)!r}{signature} cannot take ({err}); {hint}"
        ) from None


def _check_free(name: str, what: str, built_in: tuple[str, ...], registered: Any, replace: bool) -> None:
    """Refuse to register ``name`` over a built-in entry, or over a registered one unless ``replace``."""
    if name in built_in:
        raise ValueError(f"{what} {name!r} is built in and cannot be replaced; register yours under another name")
    if name in registered and not replace:
        raise ValueError(f"{what} {name!r} is already registered; pass replace=True to replace it")


def register_dataset(name: str, loader: Callable[..., DatasetSplits], *, offline: bool = True, replace: bool = False) -> None:
    """Make ``name`` a dataset, so that ``load_dataset(name)``, ``gym.make("DynaLay-v0", dataset=name)``
    and ``agents/train.py --dataset name`` load it.

    ``loader`` is called as ``loader(data_dir, seed=seed, **options)`` (``data_dir`` may be ignored)
    and must return a :class:`DatasetSplits`; the environment loads with ``seed=0``, so a generated
    dataset is the same in every run. ``offline`` says it needs no files under ``data_dir`` (it is
    listed with the offline datasets). A name already registered is refused unless
    ``replace=True``; the built-in datasets cannot be replaced.
    """
    _check_name(name, "dataset")
    if name.endswith(".npz"):
        raise ValueError(f"dataset name {name!r} ends in .npz, which load_dataset reads as a path to a file; choose another name")
    _check_callable(
        loader,
        f"dataset {name!r}'s loader",
        "loader(data_dir, seed=seed)",
        "give it a data_dir parameter (it may ignore it) and a seed keyword",
        None,
        seed=0,
    )
    if not isinstance(offline, bool):
        raise TypeError(f"dataset {name!r}: offline must be True or False, got {offline!r}")
    _check_free(name, "dataset", _BUILT_IN, DATASETS, replace)
    DATASETS[name] = loader
    if name in OFFLINE_DATASETS:
        OFFLINE_DATASETS.remove(name)
    if offline:
        OFFLINE_DATASETS.append(name)


def unregister_dataset(name: str) -> None:
    """Remove a dataset added by :func:`register_dataset` (e.g. after a test)."""
    if name in _BUILT_IN:
        raise ValueError(f"dataset {name!r} is built in and cannot be unregistered")
    if name not in DATASETS:
        registered = [n for n in DATASETS if n not in _BUILT_IN]
        raise ValueError(f"dataset {name!r} is not registered; registered datasets: {', '.join(registered) or 'none'}")
    del DATASETS[name]
    if name in OFFLINE_DATASETS:
        OFFLINE_DATASETS.remove(name)


def _available() -> str:
    offline = [n for n in DATASETS if n in OFFLINE_DATASETS]
    files = [n for n in DATASETS if n not in OFFLINE_DATASETS]
    return (
        f"{', '.join(offline)} (offline), {', '.join(files)} (files under data_dir), or a path ending in .npz "
        f"(main_models.register_dataset adds a name)"
    )


def load_dataset(
    name: str,
    data_dir: str | None = None,
    *,
    seed: int = 0,
    download: bool | None = None,
    **options: Any,
) -> DatasetSplits:
    """Load a dataset by name (see the module docstring), or a user's ``.npz`` file by path.

    ``options`` go to the loader (e.g. ``max_len`` for imdb, ``seq_len`` for wikitext2); an option
    the loader does not take is refused by name. ``download`` only concerns datasets that can be
    downloaded (CIFAR) and is ignored by the others. An unknown name is refused with the list of
    known ones.
    """
    if not isinstance(name, str):
        raise TypeError(f"dataset must be a name or a path to an .npz file, got {type(name).__name__} {name!r}")
    if name.endswith(".npz"):
        loader: Callable[..., DatasetSplits] = load_npz
        first: Any = name
    elif name in DATASETS:
        loader, first = DATASETS[name], data_dir
    else:
        raise ValueError(f"unknown dataset {name!r}; available: {_available()}")
    params = inspect.signature(loader).parameters
    unknown = sorted(set(options) - set(params) - {"data_dir", "path"})
    if unknown:
        accepted = sorted(p for p in params if p not in ("data_dir", "path", "seed", "download"))
        raise ValueError(f"dataset {name!r} takes no option(s) {unknown}; its options: {accepted or 'none'}")
    if "download" in params:
        options["download"] = download
    splits = loader(first, seed=seed, **options)
    if not isinstance(splits, DatasetSplits):
        raise TypeError(
            f"dataset {name!r}: its loader returned a {type(splits).__name__}, not a DatasetSplits; build one with "
            f"DatasetSplits(name, x_train, y_train, x_test, y_test, num_classes) or DatasetSplits.from_arrays "
            f"(main_models/data/splits.py), as examples/own_task.py does"
        )
    # DatasetSplits checks its input kind when built, but meta is a plain dict a loader may change after
    if splits.meta.get("input_kind") not in INPUT_KINDS:
        raise ValueError(f"dataset {name!r}: meta['input_kind'] must be one of {list(INPUT_KINDS)}, got {splits.meta.get('input_kind')!r}")
    return splits
