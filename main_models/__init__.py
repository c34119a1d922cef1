"""Main models for DynaLay: FPI layers and the networks built from them. No RL in here."""

from .data import DATASETS, DatasetSplits, build_main_model, load_dataset, load_digits
from .fpi import GRAD_MODES, ContractiveTanhBlock, FPILayer, FPIResult, fixed_point_solve
from .network import FPINetwork, PathState, build_mlp_fpi_network

__all__ = [
    "DATASETS",
    "GRAD_MODES",
    "ContractiveTanhBlock",
    "DatasetSplits",
    "FPILayer",
    "FPINetwork",
    "FPIResult",
    "PathState",
    "build_main_model",
    "build_mlp_fpi_network",
    "fixed_point_solve",
    "load_dataset",
    "load_digits",
]
