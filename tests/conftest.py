import atexit
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from types import ModuleType
from typing import Callable

import pytest
import torch


def _warmup_cache_for_this_run() -> Path:
    """A warm-up cache (``$DYNALAY_CACHE_DIR``) that belongs to this test run alone: no test reads a warm-up
    left by an earlier run or by the user (``~/.cache/dynalay``), and every process of the run shares one,
    so that one warm-up serves every test that asks for it. Under pytest-xdist the workers share the
    directory named by the run's id (set below by the controller, which removes it at the end); a run
    without workers gets a directory of its own, removed at exit."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if run:
        path = Path(tempfile.gettempdir()) / f"dynalay-test-cache-{run}"
        path.mkdir(mode=0o700, exist_ok=True)
        return path
    path = Path(tempfile.mkdtemp(prefix="dynalay-test-cache-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


# set before anything builds an engine, in this process and in every subprocess a test starts
os.environ["DYNALAY_CACHE_DIR"] = str(_warmup_cache_for_this_run())

from main_models import PathState  # noqa: E402

# The models under test are tiny: intra-op threads only add overhead, and oversubscribe the
# 2-core CI machine when a test starts a subprocess.
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent


def copy_state(state: PathState) -> PathState:
    """A copy of every tensor of ``state`` (fpi_step updates its argument in place without autograd)."""
    return PathState(state.u.clone(), [z.clone() for z in state.z])


def load_script(relative: str) -> ModuleType:
    """Import a script of the repository (e.g. benchmarks/fixed_paths.py) as a module. A benchmark imports
    its harness by the bare name ``harness``, as it does when run from benchmarks/: that name is provided."""
    path = ROOT / relative
    name = "script_" + path.stem
    if path.parent.name == "benchmarks" and path.stem != "harness":
        sys.modules.setdefault("harness", load_script("benchmarks/harness.py"))
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def run_script(relative: str, *args: object, timeout: float = 600, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run a script of the repository (e.g. benchmarks/introspection.py) in a fresh interpreter, as a user
    would from a shell, with its output captured as text."""
    argv = [sys.executable, str(ROOT / relative), *map(str, args)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cwd)


def script_json(relative: str, *args: object, timeout: float = 600) -> dict:
    """:func:`run_script`, which must succeed: the JSON its last line of output holds (``--json``)."""
    proc = run_script(relative, *args, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def refusal(main: Callable[[list[str]], object], argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """What a script's ``main(argv)`` says when it refuses ``argv``: it must exit with a failing status (as a shell
    would see it: argparse's status 2, or ``SystemExit("error: ...")``, which the interpreter prints and exits 1 for),
    and the text is what would reach stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    code = exit_info.value.code
    assert code not in (0, None), f"{argv} exited with success"
    return capsys.readouterr().err + (code if isinstance(code, str) else "")


def quiet_run_flags(logdir: Path, run_name: str) -> list[str]:
    """The train.py flags that put a test's run at ``logdir/run_name``, on the CPU, without a progress bar."""
    return ["--no-progress", "--device", "cpu", "--logdir", str(logdir), "--run-name", run_name]


def tiny_run_argv(*, total_timesteps: int, checkpoint_freq: int) -> list[str]:
    """The flags of agents/train.py for a tiny training run on digits, on the CPU (no --algo, --logdir or --run-name)."""
    return [
        "--dataset",
        "digits",
        "--imitation-samples",
        "64",
        "--imitation-epochs",
        "2",
        "--total-timesteps",
        str(total_timesteps),
        "--num-envs",
        "8",
        "--pretrain-epochs",
        "1",
        "--cotrain-every",
        "16",
        "--checkpoint-freq",
        str(checkpoint_freq),
        "--log-every",
        "128",
        "--no-progress",
        "--device",
        "cpu",
    ]


# ---- running the suite on several workers (pytest-xdist, ``-n auto`` in pyproject.toml) ----------
MAX_WORKERS = 4  # beyond this the longest single tests bound the run, and each worker costs a torch import


def _usable_cpus() -> int:
    """CPUs this process may use: its affinity, further limited by a cgroup v2 CPU quota (containers)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker per usable CPU, at most MAX_WORKERS (xdist's own count can see the host's cores)."""
    return min(_usable_cpus(), MAX_WORKERS)


def pytest_configure(config):
    # the controller of an xdist run names the run, so that it can remove the workers' shared cache at the end
    if not hasattr(config, "workerinput") and config.pluginmanager.hasplugin("xdist") and config.getoption("testrunuid", None) is None:
        config.option.testrunuid = uuid.uuid4().hex


def pytest_unconfigure(config):
    run = getattr(config.option, "testrunuid", None)
    if run and not hasattr(config, "workerinput"):
        shutil.rmtree(Path(tempfile.gettempdir()) / f"dynalay-test-cache-{run}", ignore_errors=True)


# Seconds each of the longest tests took in a whole run of the suite on a 2-core machine (pytest --durations). Used only
# to order the run: the longest start first, so that xdist (``--maxschedchunk 1``) does not leave one worker
# finishing a long test alone at the end. A test missing here, or timed differently now, only changes the order.
EXPECTED_SECONDS = {
    "tests/test_benchmarks.py::test_agent_vs_rule_quick": 38,
    "tests/test_readme_clients.py::test_readme_client_snippet_runs[rl-zoo]": 34,
    "tests/test_benchmarks.py::test_distributed_quick": 32,
    "tests/test_agents.py::test_killed_run_resumes_from_its_checkpoint": 24,
    "tests/test_transfer.py::test_transfer_quick": 21,
    "tests/test_benchmarks.py::test_adaptive_vs_fixed_quick": 20,
    "tests/test_warmup_cache.py::test_envs_built_at_once_in_subprocesses_share_one_warm_up": 19,
    "tests/test_distributed.py::test_torchrun_trains_with_two_ranks_end_to_end": 18,
    "tests/test_benchmarks.py::test_introspection_quick": 17,
    "tests/test_hardening.py::test_a_kill_during_warm_up_resumes_the_warm_up": 12,
    "tests/test_distributed.py::test_an_all_reduced_update_is_the_single_process_update_on_the_union_of_rows": 12,
    "tests/test_readme_clients.py::test_readme_client_snippet_runs[torchrl]": 10,
    "tests/test_readme_clients.py::test_readme_client_snippet_runs[cleanrl]": 10,
    "tests/test_hardening.py::test_two_runs_started_with_one_name_cannot_both_win": 10,
    "tests/test_readme_clients.py::test_readme_client_snippet_runs[sb3]": 10,
    "tests/test_benchmarks.py::test_backward_quick": 10,
    "tests/test_env.py::test_a_bare_dataset_is_warmed_up_and_passes_gymnasium_and_sb3_checkers": 9,
    "tests/test_agents.py::test_warmup_cache_continues_exactly_like_a_warm_up": 9,
    "tests/test_benchmarks.py::test_warmup_paths_quick": 9,
    "tests/test_benchmarks.py::test_time_to_env_times_each_training_gradient_and_compares_their_accuracy": 9,
    "tests/test_benchmarks.py::test_inference_time_quick": 8,
    "tests/test_benchmarks.py::test_observation_ablation_quick": 8,
    "tests/test_benchmarks.py::test_iteration_body_quick": 8,
    "tests/test_benchmarks.py::test_solver_quick": 7,
    "tests/test_benchmarks.py::test_env_throughput_quick": 5,
}


def pytest_collection_modifyitems(config, items):
    def expected(item) -> float:
        return EXPECTED_SECONDS.get(item.nodeid, EXPECTED_SECONDS.get(item.nodeid.split("[")[0], 0.0))

    items.sort(key=lambda item: -expected(item))  # stable: the rest keep their order
