"""Datasets for the main models, as tensors with a fixed train/test split.

Every dataset loads into a :class:`DatasetSplits` through :func:`load_dataset`. Offline (bundled
or generated, no download; :mod:`.offline`):

* ``digits`` (default): scikit-learn's bundled 8x8 handwritten digits, flat -> MLP;
* ``digits-graded``: the same digits corrupted at a known level 0..4 per sample, flat -> MLP;
* ``parity``: variable-length bit strings, level = length bucket, tokens -> LSTM;
* ``grid-lookup``: token grids with a question in the corner, level = question kind, grid -> grid-LSTM.

From files under ``data_dir`` (default ``$DYNALAY_DATA_DIR`` or ``./data``), in their real format
(:mod:`.files`):

* ``cifar10`` / ``cifar100``: ``cifar-10-batches-py`` / ``cifar-100-python`` via torchvision
  (``download=True`` or ``DYNALAY_DOWNLOAD=1`` fetches them), images -> CNN;
* ``imdb``: the ``aclImdb`` directory, tokens -> LSTM;
* ``wikitext2``: ``wiki.{train,test}.tokens``, next-token prediction, tokens -> LSTM;
* a path ending in ``.npz``: a user's own arrays (see :func:`load_npz`).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from .files import load_cifar10, load_cifar100, load_imdb, load_npz, load_wikitext2
from .grid_lookup import load_grid_lookup
from .offline import load_digits, load_digits_graded, load_parity
from .splits import INPUT_KINDS, DatasetSplits, infer_input_kind, split_indices

DATASETS: dict[str, Callable[..., DatasetSplits]] = {
    "digits": load_digits,
    "digits-graded": load_digits_graded,
    "parity": load_parity,
    "grid-lookup": load_grid_lookup,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "imdb": load_imdb,
    "wikitext2": load_wikitext2,
}
"""Loaders by name; each is called as ``loader(data_dir, seed=seed, **options)``."""

OFFLINE_DATASETS: tuple[str, ...] = ("digits", "digits-graded", "parity", "grid-lookup")
"""Datasets that need no files (bundled with scikit-learn or generated)."""


def _available() -> str:
    offline = [n for n in DATASETS if n in OFFLINE_DATASETS]
    files = [n for n in DATASETS if n not in OFFLINE_DATASETS]
    return f"{', '.join(offline)} (offline), {', '.join(files)} (files under data_dir), or a path ending in .npz"


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
    return loader(first, seed=seed, **options)
