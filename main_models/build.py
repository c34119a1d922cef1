"""Which main model reads which data, building it, and registering a user's own models."""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

from .data import _check_callable, _check_free, _check_name
from .data.splits import INPUT_KINDS, DatasetSplits
from .fpi import GRAD_MODES, check_grad_mode
from .network import FPINetwork

MAIN_MODELS: dict[str, str] = {"mlp": "flat", "cnn": "image", "lstm": "tokens", "grid-lstm": "grid"}
"""Each main model and the input kind it reads; :func:`register_model` adds a user's."""
_SHAPES = {
    "flat": "float (N, features)",
    "image": "float (N, C, H, W)",
    "tokens": "integer token ids (N, T)",
    "grid": "integer token grids (N, H, W)",
}
_BUILT_IN: tuple[str, ...] = tuple(MAIN_MODELS)
# Fixed rather than derived from MAIN_MODELS, so that registering a model never changes which one
# a dataset gets by default.
_DEFAULT_FOR_KIND: dict[str, str] = {kind: model for model, kind in MAIN_MODELS.items()}


TRAINING_GRADS: dict[str, str] = {"mlp": "phantom", "cnn": "phantom", "lstm": "exact", "grid-lstm": "exact"}
"""The gradient through each fixed point that the environment's warm-up and co-training use by
default, per main model (``main_grad=`` / ``--main-grad`` overrides it). The phantom step (no
adjoint solve) halves an update's time on the mlp and the cnn, at an accuracy within the seeds'
spread of the implicit gradient's. The Jacobi LSTMs backpropagate through their scan instead: one
phantom step reaches a single time step of the recurrence, and costs them accuracy. Measurements:
benchmarks/README.md, "Training throughput" and "Time to an environment". A registered model has the
``training_grad`` it was registered with."""

_REGISTERED: dict[str, Callable[..., FPINetwork]] = {}
"""The builders of the models added by :func:`register_model`."""

MODEL_API: dict[str, dict[str, str]] = {
    "FLOP counts (the cost model)": {
        "straightforward_flops": "FLOPs of one plain pass for one sample, the unit every step's cost is measured in",
        "layer_flops": "FLOPs of one application of each layer, a (L,) tensor",
        "fpi_step_flops": "fpi_step_flops(layer, iterations): FLOPs of an FPI step on a (0-based) layer taking that many iterations",
        "path_flops": "path_flops(paths, iterations): FLOPs of whole action paths",
        "residual_probe_flops": "FLOPs of fixed_point_residuals for one sample",
    },
    "activations (the observation)": {
        "summary_dim": "width of layer_summaries' output",
        "layer_summaries": "layer_summaries(state): pooled activations of every layer, (B, summary_dim)",
        "fixed_point_residuals": "fixed_point_residuals(state): each layer's distance from its fixed point, (B, L)",
    },
    "the path API (the MDP's steps)": {
        "num_layers": "L, the number of FPI layers",
        "straightforward": "straightforward(x) -> PathState: the plain pass",
        "fpi_step": "fpi_step(state, choice) -> (state, iterations): FPI on each row's chosen layer, then the layers above once",
        "readout": "readout(state) -> logits",
        "run_paths": "run_paths(x, paths, start=None) -> (logits, iterations): replay action paths with autograd (co-training), "
        "from the plain pass start when it is given",
        "rollout_weights": "rollout_weights(): a context manager for graph-free rollouts",
        "configure_solver": "configure_solver(solver, grad=...): how the layers solve and differentiate",
    },
}
"""What the environment, its evaluation, baselines and co-training use of a main model, by
purpose. :class:`FPINetwork` has all of it; a registered model's builder must return an object
that does (checked by :func:`build_main_model`)."""
_HOW_TO = (
    "build the model as an FPINetwork (main_models/network.py: FPINetwork(stem, [FPILayer(block), ...], head, "
    "stem_flops=..., head_flops=...), whose blocks define flops_per_sample()), as examples/own_task.py does"
)


def register_model(
    name: str,
    builder: Callable[[DatasetSplits], FPINetwork],
    *,
    input_kind: str,
    training_grad: str = "implicit",
    replace: bool = False,
) -> None:
    """Make ``name`` a main model, so that ``build_main_model(splits, model=name)``,
    ``gym.make("DynaLay-v0", model=name)`` and ``agents/train.py --model name`` build it.

    ``builder(splits, **options)`` builds a fresh, untrained model for ``splits`` (the environment
    seeds torch before calling it); it must return an :class:`FPINetwork`, or an ``nn.Module``
    with everything in :data:`MODEL_API`. ``input_kind`` (one of :data:`INPUT_KINDS`) is the data it
    reads, and ``training_grad`` (one of ``GRAD_MODES``) its gradient through each fixed point in
    the warm-up and co-training (:data:`TRAINING_GRADS`). A name already registered is refused
    unless ``replace=True``; the built-in models cannot be replaced.
    """
    _check_name(name, "model")
    _check_callable(
        builder,
        f"model {name!r}'s builder",
        "builder(splits, **options)",
        "give it one positional parameter, the DatasetSplits it builds for",
        None,
    )
    if input_kind not in INPUT_KINDS:
        raise ValueError(f"model {name!r}: input_kind must be one of {list(INPUT_KINDS)} (the data it reads), got {input_kind!r}")
    if training_grad not in GRAD_MODES:
        raise ValueError(f"model {name!r}: training_grad must be one of {list(GRAD_MODES)}, got {training_grad!r}")
    _check_free(name, "model", _BUILT_IN, MAIN_MODELS, replace)
    MAIN_MODELS[name] = input_kind
    TRAINING_GRADS[name] = training_grad
    _REGISTERED[name] = builder


def unregister_model(name: str) -> None:
    """Remove a model added by :func:`register_model` (e.g. after a test)."""
    if name in _BUILT_IN:
        raise ValueError(f"model {name!r} is built in and cannot be unregistered")
    if name not in _REGISTERED:
        raise ValueError(f"model {name!r} is not registered; registered models: {', '.join(_REGISTERED) or 'none'}")
    del MAIN_MODELS[name], TRAINING_GRADS[name], _REGISTERED[name]


def default_model(splits: DatasetSplits) -> str:
    """The main model for a dataset's input kind: flat -> mlp, image -> cnn, tokens -> lstm,
    grid -> grid-lstm. A registered model is only used when asked for by name."""
    return _DEFAULT_FOR_KIND[splits.input_kind]


def build_main_model(splits: DatasetSplits, model: str | None = None, **kwargs: Any) -> FPINetwork:
    """Build main model ``model`` (a key of :data:`MAIN_MODELS`; ``None`` picks the one for the data) for
    ``splits``. ``kwargs`` go to the builder (e.g. ``hidden``, ``channels``, ``fpi_tol``).

    An unknown model name, or a model that cannot read the data's inputs, is refused naming both. A
    registered model is checked before it is returned (:func:`_check_built`): one that cannot
    report its FLOPs or activations, or whose outputs do not fit the data, is refused saying what
    to add.
    """
    from .conv import build_conv_fpi_network
    from .grid import build_grid_lstm_fpi_network
    from .lstm import build_lstm_fpi_network
    from .network import build_mlp_fpi_network

    if model is None:
        model = default_model(splits)
    if model not in MAIN_MODELS:
        raise ValueError(f"unknown model {model!r}; available: {', '.join(MAIN_MODELS)} (main_models.register_model adds one)")
    kind = splits.input_kind
    if MAIN_MODELS[model] != kind:
        raise ValueError(
            f"model {model!r} reads {_SHAPES[MAIN_MODELS[model]]} inputs, but dataset {splits.name!r} has "
            f"{_SHAPES[kind]} inputs of shape {splits.input_shape}; use model {default_model(splits)!r}"
        )
    if model in _REGISTERED:
        return _build_registered(model, splits, kwargs)
    if model == "mlp":
        return build_mlp_fpi_network(splits.input_shape[0], splits.num_classes, **kwargs)
    if model == "cnn":
        c, h, w = splits.input_shape
        return build_conv_fpi_network(c, (h, w), splits.num_classes, **kwargs)
    if model == "grid-lstm":
        return build_grid_lstm_fpi_network(int(splits.meta["vocab_size"]), splits.input_shape, splits.num_classes, **kwargs)
    kwargs.setdefault("pad_id", int(splits.meta.get("pad_id", 0)))
    return build_lstm_fpi_network(int(splits.meta["vocab_size"]), splits.input_shape[0], splits.num_classes, **kwargs)


def _build_registered(name: str, splits: DatasetSplits, kwargs: dict[str, Any]) -> FPINetwork:
    try:
        network = _REGISTERED[name](splits, **kwargs)
    except AttributeError as err:
        # FPINetwork asks every block for its FLOPs while it is built, so a block without them
        # fails inside the user's builder with only torch's "has no attribute".
        if "flops_per_sample" not in str(err):
            raise
        raise TypeError(
            f"model {name!r}: {err}. Every FPI block must report flops_per_sample() -> int, the FLOPs of one application for "
            f"one sample, which each FPI step is charged by; add it to the block (see ContractiveTanhBlock.flops_per_sample in "
            f"main_models/fpi.py; fpi_flops() -> (setup, per iteration) is optional)"
        ) from None
    _check_built(name, network, splits)
    return network


def _check_built(name: str, network: Any, splits: DatasetSplits) -> None:
    """Refuse, before the environment uses it, a registered model that cannot report its FLOPs or
    activations or whose outputs do not fit ``splits``; each error says what to add or fix."""
    made = type(network).__name__
    missing = {group: [attr for attr in api if not hasattr(network, attr)] for group, api in MODEL_API.items()}
    missing = {group: attrs for group, attrs in missing.items() if attrs}
    if missing:
        lacks = "; ".join(f"for {group}: {', '.join(attrs)}" for group, attrs in missing.items())
        raise TypeError(
            f"model {name!r}: its builder returned a {made}, which cannot report what the environment needs. "
            f"Add {lacks} (main_models.MODEL_API says what each is) or, simpler, {_HOW_TO}"
        )
    if not isinstance(network, nn.Module):
        raise TypeError(
            f"model {name!r}: its builder returned a {made}, not a torch.nn.Module (the environment moves it to "
            f"its device, trains it and saves its state_dict); {_HOW_TO}"
        )
    _check_callable(
        network.run_paths,
        f"model {name!r}'s run_paths",
        "run_paths(x, paths, start=state)",
        "co-training replays the paths from a plain pass it has computed once (see MODEL_API)",
        None,
        None,
        start=None,
    )
    layers = network.num_layers
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
        raise ValueError(
            f"model {name!r}: num_layers must be an integer >= 1 (the agent's actions are NOP and one per layer), got {layers!r}"
        )
    full = network.straightforward_flops
    try:
        flops = float(full)
    except (TypeError, ValueError):
        flops = math.nan
    if not math.isfinite(flops) or flops <= 0:
        raise ValueError(
            f"model {name!r}: straightforward_flops must be a positive number (every step's cost is a fraction of it), "
            f"got {full!r}; give FPINetwork the stem_flops and head_flops of your stem and head"
        )
    if isinstance(network, FPINetwork):
        for j, layer in enumerate(network.layers):
            try:
                check_grad_mode(TRAINING_GRADS[name], layer.block)
            except ValueError as err:
                raise ValueError(
                    f"model {name!r} was registered with training_grad {TRAINING_GRADS[name]!r}, but layer {j + 1}: {err}"
                ) from None
    # One plain pass on two samples, in eval mode so that no power-iteration buffer moves: a
    # mismatch found here would otherwise surface as a shape error deep inside the engine.
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad():
            x = splits.x_train[:2]
            state = network.straightforward(x)
            logits = network.readout(state)
            summaries = network.layer_summaries(state)
            step = network.fpi_step_flops(torch.arange(layers), torch.ones(layers, dtype=torch.long))
    finally:
        network.train(was_training)
    rows = x.shape[0]
    if tuple(logits.shape) != (rows, splits.num_classes):
        raise ValueError(
            f"model {name!r}: readout gives logits of shape {tuple(logits.shape)} for {rows} samples; dataset "
            f"{splits.name!r} has {splits.num_classes} classes, so the head must output ({rows}, {splits.num_classes})"
        )
    if tuple(summaries.shape) != (rows, network.summary_dim):
        raise ValueError(
            f"model {name!r}: layer_summaries gives shape {tuple(summaries.shape)} but summary_dim is "
            f"{network.summary_dim}; the observation needs ({rows}, summary_dim)"
        )
    if tuple(step.shape) != (layers,) or not bool(torch.isfinite(step).all()) or bool((step < 0).any()):
        raise ValueError(f"model {name!r}: fpi_step_flops must give one finite, non-negative FLOP count per row, got {step.tolist()}")
