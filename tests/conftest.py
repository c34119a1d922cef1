import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import torch

from main_models import PathState

# The models under test are tiny: intra-op threads only add overhead, and oversubscribe the
# 2-core CI machine when a test starts a subprocess.
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent


def copy_state(state: PathState) -> PathState:
    """A copy of every tensor of ``state`` (fpi_step updates its argument in place without autograd)."""
    return PathState(state.u.clone(), [z.clone() for z in state.z])


def load_script(relative: str) -> ModuleType:
    """Import a script of the repository (e.g. benchmarks/fixed_paths.py) as a module."""
    path = ROOT / relative
    name = "script_" + path.stem
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]
