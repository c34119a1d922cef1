"""Which main model reads which data, and building it."""

from __future__ import annotations

from typing import Any

from .data.splits import DatasetSplits
from .network import FPINetwork

MAIN_MODELS: dict[str, str] = {"mlp": "flat", "cnn": "image", "lstm": "tokens", "grid-lstm": "grid"}
"""Each main model and the input kind it reads."""
_SHAPES = {"flat": "float (N, features)", "image": "float (N, C, H, W)", "tokens": "integer token ids (N, T)",
           "grid": "integer token grids (N, H, W)"}


TRAINING_GRADS: dict[str, str] = {"mlp": "phantom", "cnn": "implicit", "lstm": "exact", "grid-lstm": "exact"}
"""The gradient through each fixed point that the environment's warm-up and co-training use by
default, per main model. The phantom step halves an update's time on the mlp at the same final
accuracy (benchmarks/README.md, "Training throughput"). The Jacobi LSTMs keep the implicit gradient:
one phantom step backpropagates through a single time step of the recurrence, and on the
canonical grid-lookup demo it cost 2.5 points of FPI-on-every-layer accuracy (0.9735 vs 0.9985)
and 4.4 of the agent's (0.9545 vs 0.9980). The cnn keeps it until measured."""


def default_model(splits: DatasetSplits) -> str:
    """The main model for a dataset's input kind: flat -> mlp, image -> cnn, tokens -> lstm,
    grid -> grid-lstm."""
    return {kind: model for model, kind in MAIN_MODELS.items()}[splits.input_kind]


def build_main_model(splits: DatasetSplits, model: str | None = None, **kwargs: Any) -> FPINetwork:
    """Build main model ``model`` (a key of :data:`MAIN_MODELS`; ``None`` picks the one for the data) for
    ``splits``. ``kwargs`` go to the builder (e.g. ``hidden``, ``channels``, ``fpi_tol``).

    An unknown model name, or a model that cannot read the data's inputs, is refused naming both.
    """
    from .conv import build_conv_fpi_network
    from .grid import build_grid_lstm_fpi_network
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
    if model == "grid-lstm":
        return build_grid_lstm_fpi_network(int(splits.meta["vocab_size"]), splits.input_shape, splits.num_classes, **kwargs)
    kwargs.setdefault("pad_id", int(splits.meta.get("pad_id", 0)))
    return build_lstm_fpi_network(int(splits.meta["vocab_size"]), splits.input_shape[0], splits.num_classes, **kwargs)
