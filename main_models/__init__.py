"""Main models for DynaLay: FPI layers, the networks built from them, their data, and training
along action paths. Nothing in here knows about reinforcement learning.

A user's own task: :func:`register_dataset` names a loader and :func:`register_model` a builder,
then ``gym.make("DynaLay-v0", dataset=name, model=name)`` and ``agents/train.py`` use them
(examples/own_task.py)."""

from .storage import UnsafeFileError, atomic_write_bytes, atomic_write_text, load_tensors, save_tensors, write_json
from .build import MAIN_MODELS, MODEL_API, TRAINING_GRADS, build_main_model, default_model, register_model, unregister_model
from .conv import ContractiveConvBlock, ConvOperatorNorm, build_conv_fpi_network
from .data import (
    DATASETS,
    INPUT_KINDS,
    OFFLINE_DATASETS,
    DatasetSplits,
    infer_input_kind,
    load_cifar10,
    load_cifar100,
    load_dataset,
    load_digits,
    load_digits_graded,
    load_grid_lookup,
    load_imdb,
    load_npz,
    load_parity,
    load_wikitext2,
    register_dataset,
    split_indices,
    unregister_dataset,
)
from .device import add_runtime_flags, local_device, resolve_device, set_threads
from .grid import AxisLSTMBlock, build_grid_lstm_fpi_network
from .fpi import GRAD_MODES, SOLVERS, Anderson, ContractiveTanhBlock, FPILayer, FPIResult, Picard, SolverSettings, fixed_point_solve, make_solver, solve_together, FixedPointProblem
from .lstm import CausalConvEmbedding, JacobiLSTMBlock, LastStepHead, build_lstm_fpi_network
from .network import FPINetwork, PathState, assemble_network, build_mlp_fpi_network
from .paths import evaluate_fixed_path, fixed_path_oracle, parse_fpi_layers, per_level, run_baseline
from .trainer import ALTERNATIVE_PATHS, EpochProgress, MainModelTrainer, PathSource, fixed_paths, random_paths
from .distributed import DistributedMainModelTrainer, replicas_equal

__all__ = [
    "UnsafeFileError", "atomic_write_bytes", "atomic_write_text", "load_tensors", "save_tensors", "write_json",
    "MAIN_MODELS", "MODEL_API", "TRAINING_GRADS", "build_main_model", "default_model", "register_model",
    "unregister_model", "ContractiveConvBlock", "ConvOperatorNorm", "build_conv_fpi_network", "DATASETS", "INPUT_KINDS",
    "OFFLINE_DATASETS", "DatasetSplits", "infer_input_kind", "load_cifar10", "load_cifar100", "load_dataset",
    "load_digits", "load_digits_graded", "load_grid_lookup", "load_imdb", "load_npz", "load_parity", "load_wikitext2",
    "register_dataset", "split_indices", "unregister_dataset", "add_runtime_flags", "local_device", "resolve_device", "set_threads",
    "AxisLSTMBlock", "build_grid_lstm_fpi_network", "GRAD_MODES", "SOLVERS", "Anderson", "ContractiveTanhBlock",
    "FPILayer", "FPIResult", "Picard", "SolverSettings", "fixed_point_solve", "make_solver", "solve_together",
    "FixedPointProblem", "CausalConvEmbedding", "JacobiLSTMBlock", "LastStepHead", "build_lstm_fpi_network",
    "FPINetwork", "PathState", "assemble_network", "build_mlp_fpi_network", "evaluate_fixed_path", "fixed_path_oracle",
    "parse_fpi_layers", "per_level", "run_baseline", "ALTERNATIVE_PATHS", "EpochProgress", "MainModelTrainer",
    "PathSource", "fixed_paths", "random_paths", "DistributedMainModelTrainer", "replicas_equal",
]
