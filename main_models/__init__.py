"""Main models for DynaLay: FPI layers, the networks built from them, their data, and training
along action paths. Nothing in here knows about reinforcement learning."""

from .storage import UnsafeFileError, atomic_write_bytes, atomic_write_text, load_tensors, save_tensors, write_json
from .build import MAIN_MODELS, TRAINING_GRADS, build_main_model, default_model
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
    split_indices,
)
from .device import add_runtime_flags, resolve_device, set_threads
from .grid import AxisLSTMBlock, build_grid_lstm_fpi_network
from .fpi import GRAD_MODES, SOLVERS, Anderson, ContractiveTanhBlock, FPILayer, FPIResult, Picard, SolverSettings, fixed_point_solve, make_solver, solve_together, FixedPointProblem
from .lstm import CausalConvEmbedding, JacobiLSTMBlock, LastStepHead, build_lstm_fpi_network
from .network import FPINetwork, PathState, assemble_network, build_mlp_fpi_network
from .paths import evaluate_fixed_path, fixed_path_oracle, parse_fpi_layers, per_level, run_baseline
from .trainer import ALTERNATIVE_PATHS, EpochProgress, MainModelTrainer, PathSource, fixed_paths, random_paths
from .distributed import DistributedMainModelTrainer, replicas_equal
