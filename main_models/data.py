"""Datasets for the main models, as tensors with a fixed train/test split, and the model that fits.

Every dataset loads into a :class:`DatasetSplits` through :func:`load_dataset`. Offline (bundled
or generated, no download):

* ``digits`` (default): scikit-learn's bundled 8x8 handwritten digits, flat -> MLP;
* ``digits-graded``: the same digits corrupted at a known level 0..4 per sample, flat -> MLP;
* ``parity``: variable-length bit strings, level = length bucket, tokens -> LSTM.

From files under ``data_dir`` (default ``$DYNALAY_DATA_DIR`` or ``./data``), in their real format:

* ``cifar10`` / ``cifar100``: ``cifar-10-batches-py`` / ``cifar-100-python`` via torchvision
  (``download=True`` or ``DYNALAY_DOWNLOAD=1`` fetches them), images -> CNN;
* ``imdb``: the ``aclImdb`` directory, tokens -> LSTM;
* ``wikitext2``: ``wiki.{train,test}.tokens``, next-token prediction, tokens -> LSTM;
* a path ending in ``.npz``: a user's own arrays (see :func:`load_npz`).
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from .datasets_files import load_cifar10, load_cifar100, load_imdb, load_npz, load_wikitext2
from .datasets_graded import load_digits_graded, load_parity
from .splits import INPUT_KINDS, DatasetSplits, infer_input_kind, split_indices

if TYPE_CHECKING:
    from .network import FPINetwork


def load_digits(data_dir: str | None = None, *, seed: int = 0, test_fraction: float = 0.2) -> DatasetSplits:
    """scikit-learn's bundled 8x8 digits (1797 images, 10 classes), pixels scaled to [0, 1].

    ``data_dir`` is accepted for a uniform loader signature and ignored: the data is bundled.
    The split is a fixed permutation drawn from ``seed``.
    """
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    train, test = split_indices(len(x), test_fraction, seed)
    return DatasetSplits(
        "digits",
        torch.from_numpy(x[train]),
        torch.from_numpy(y[train]),
        torch.from_numpy(x[test]),
        torch.from_numpy(y[test]),
        num_classes=10,
        meta={"source": "sklearn.datasets.load_digits", "split_seed": seed, "input_kind": "flat"},
    )


DATASETS: dict[str, Callable[..., DatasetSplits]] = {
    "digits": load_digits,
    "digits-graded": load_digits_graded,
    "parity": load_parity,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "imdb": load_imdb,
    "wikitext2": load_wikitext2,
}
"""Loaders by name; each is called as ``loader(data_dir, seed=seed, **options)``."""

OFFLINE_DATASETS: tuple[str, ...] = ("digits", "digits-graded", "parity")
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
    if str(name).endswith(".npz"):
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


MAIN_MODELS: dict[str, str] = {"mlp": "flat", "cnn": "image", "lstm": "tokens"}
"""Each main model and the input kind it reads."""
_SHAPES = {"flat": "float (N, features)", "image": "float (N, C, H, W)", "tokens": "integer token ids (N, T)"}


def default_model(splits: DatasetSplits) -> str:
    """The main model for a dataset's input kind: flat -> mlp, image -> cnn, tokens -> lstm."""
    return {kind: model for model, kind in MAIN_MODELS.items()}[splits.input_kind]


def build_main_model(splits: DatasetSplits, model: str | None = None, **kwargs: Any) -> "FPINetwork":
    """Build main model ``model`` ("mlp", "cnn" or "lstm"; ``None`` picks the one for the data) for
    ``splits``. ``kwargs`` go to the builder (e.g. ``hidden``, ``channels``, ``fpi_tol``).

    An unknown model name, or a model that cannot read the data's inputs, is refused naming both.
    """
    from .conv import build_conv_fpi_network
    from .lstm import build_lstm_fpi_network
    from .network import build_mlp_fpi_network

    if model is None:
        model = default_model(splits)
    if model not in MAIN_MODELS:
        raise ValueError(f"unknown model {model!r}; available: {', '.join(MAIN_MODELS)}")
    kind = splits.input_kind
    if MAIN_MODELS[model] != kind:
        raise ValueError(
            f"model {model!r} reads {_SHAPES[MAIN_MODELS[model]]} inputs, but dataset {splits.name!r} has "
            f"{_SHAPES[kind]} inputs of shape {splits.input_shape}; use model {default_model(splits)!r}"
        )
    if model == "mlp":
        return build_mlp_fpi_network(splits.input_shape[0], splits.num_classes, **kwargs)
    if model == "cnn":
        c, h, w = splits.input_shape
        return build_conv_fpi_network(c, (h, w), splits.num_classes, **kwargs)
    kwargs.setdefault("pad_id", int(splits.meta.get("pad_id", 0)))
    return build_lstm_fpi_network(int(splits.meta["vocab_size"]), splits.input_shape[0], splits.num_classes, **kwargs)


__all__ = [
    "DATASETS",
    "INPUT_KINDS",
    "MAIN_MODELS",
    "OFFLINE_DATASETS",
    "DatasetSplits",
    "build_main_model",
    "default_model",
    "infer_input_kind",
    "load_cifar10",
    "load_cifar100",
    "load_dataset",
    "load_digits",
    "load_digits_graded",
    "load_imdb",
    "load_npz",
    "load_parity",
    "load_wikitext2",
]
