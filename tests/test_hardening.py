"""Hardening: loading never executes code, runs never overwrite each other, bad values are refused by name."""

from __future__ import annotations

import builtins
import json
import math
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import refusal, tiny_run_argv

import dynalay_env  # noqa: F401  (registers DynaLay-v0)
from agents import evaluate, train
from agents.checkpoint import load_checkpoint
from agents.run import RunDirectory
from dynalay_env import DynaLayEnv, DynaLayVectorEnv, EnvConfig
from main_models import load_npz

ROOT = Path(__file__).resolve().parent.parent
TINY = tiny_run_argv(total_timesteps=256, checkpoint_freq=128) + ["--n-steps", "4", "--algo", "reinforce"]


class Payload:
    """Unpickling this creates ``marker``: proof that a loader ran code from the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return builtins.open, (str(self.marker), "w")


def _plant_torch_file(path: Path, marker: Path) -> None:
    torch.save(
        {
            "format": 2,
            "phase": "train",
            "algo": "reinforce",
            "timesteps": 1,
            "agent": Payload(marker),
            "engine": {},
            "config": {},
            "key": {},
            "rng": {},
        },
        path,
    )


# ---- security ----------------------------------------------------------------------------------
def test_a_crafted_checkpoint_runs_nothing_in_evaluate_or_resume(tmp_path):
    train.main(TINY + ["--logdir", str(tmp_path), "--run-name", "evil"])
    run = tmp_path / "evil"
    marker = tmp_path / "pwned"
    _plant_torch_file(run / "checkpoint.pt", marker)
    with pytest.raises(SystemExit, match="refused without running any of it"):
        evaluate.main([str(run), "--device", "cpu"])
    with pytest.raises(SystemExit, match="refused without running any of it"):
        train.main(["--resume", str(run), "--no-progress", "--device", "cpu"])
    # the same payload through plain pickle does run: the test would see it
    assert not marker.exists()
    pickle.loads(pickle.dumps(Payload(marker))).close()
    assert marker.exists()


def test_a_crafted_warmup_cache_runs_nothing(tmp_path):
    cache = tmp_path / "cache"
    train.main(TINY + ["--logdir", str(tmp_path), "--run-name", "first", "--warmup-cache", str(cache), "--total-timesteps", "16"])
    (cached,) = cache.glob("*.pt")
    marker = tmp_path / "pwned"
    _plant_torch_file(cached, marker)
    with pytest.raises(SystemExit, match="refused without running any of it"):
        train.main(TINY + ["--logdir", str(tmp_path), "--run-name", "second", "--warmup-cache", str(cache)])
    assert not marker.exists()


def test_npz_with_pickled_objects_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.npz"
    np.savez(path, x=np.array([Payload(marker)] * 4, dtype=object), y=np.zeros(4, dtype=np.int64))
    with pytest.raises(ValueError, match="not a readable .npz"):
        load_npz(path)
    assert not marker.exists()


def test_cifar_pickles_are_only_read_when_their_md5_is_the_official_one(tmp_path):
    from torchvision.datasets import CIFAR10

    from main_models import load_cifar10

    marker = tmp_path / "pwned"
    folder = tmp_path / CIFAR10.base_folder
    folder.mkdir()
    for name, _ in CIFAR10.train_list + CIFAR10.test_list + [(CIFAR10.meta["filename"], None)]:
        (folder / name).write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(ValueError, match="fail torchvision's integrity check"):
        load_cifar10(str(tmp_path))
    assert not marker.exists()


# ---- data safety -------------------------------------------------------------------------------
def test_a_run_directory_belongs_to_one_run(tmp_path):
    first = RunDirectory.claim(tmp_path / "r", "new")
    (first.path / "checkpoint.pt").write_bytes(b"kept")
    with pytest.raises(SystemExit, match="already exists: continue it with --resume"):
        RunDirectory.claim(tmp_path / "r", "new")
    # while a process holds the run, neither a resume nor an overwrite can take it
    for mode in ("resume", "overwrite"):
        with pytest.raises(SystemExit, match="in use by another running process"):
            RunDirectory.claim(tmp_path / "r", mode)
    assert (first.path / "checkpoint.pt").read_bytes() == b"kept"
    first._lock.close()
    RunDirectory.claim(tmp_path / "r", "overwrite")
    assert [p.name for p in (tmp_path / "r").iterdir()] == [".lock"]


@pytest.mark.slow
def test_two_runs_started_with_one_name_cannot_both_win(tmp_path, capsys):
    argv = [
        sys.executable,
        str(ROOT / "agents" / "train.py"),
        *TINY,
        "--total-timesteps",
        "64",
        "--pretrain-epochs",
        "0",
        "--logdir",
        str(tmp_path),
        "--run-name",
        "same",
    ]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outcomes = [p.communicate(timeout=300) + (p.returncode,) for p in procs]
    assert sorted(rc for _, _, rc in outcomes) == [0, 1], outcomes
    loser = next(err for _, err, rc in outcomes if rc)
    assert "already exists" in loser
    # a later start with the same name is refused too (in this process), and the finished run is intact
    assert "already exists" in refusal(train.main, argv[2:], capsys)
    assert json.loads((tmp_path / "same" / "eval.json").read_text())["timesteps"] >= 64


@pytest.mark.slow
def test_a_training_run_holds_its_directory_until_it_ends(tmp_path, capsys):
    """While a run trains, an --overwrite (or --resume) of its directory is refused and its files stay;
    once it has ended, the directory can be taken again."""
    base = [sys.executable, str(ROOT / "agents" / "train.py"), *TINY, "--pretrain-epochs", "0", "--logdir", str(tmp_path)]
    first = subprocess.Popen([*base, "--run-name", "r", "--total-timesteps", "1000000"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        while not (tmp_path / "r" / "config.json").exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert first.poll() is None and (tmp_path / "r" / "config.json").exists(), (
            first.stderr.read().decode()[-800:] if first.poll() else ""
        )
        # refused in this process: the other process holds the directory's lock
        for flag in (["--run-name", "r", "--overwrite"], ["--resume", str(tmp_path / "r")]):
            assert "is in use by another running process" in refusal(train.main, [*base[2:], *flag], capsys)
        assert (tmp_path / "r" / "config.json").exists()
    finally:
        first.kill()
        first.wait()
    # in this process too, a finished main() has let its directory go
    train.main([*TINY, "--total-timesteps", "16", "--pretrain-epochs", "0", "--logdir", str(tmp_path), "--run-name", "r", "--overwrite"])
    RunDirectory.claim(tmp_path / "r", "overwrite").release()


@pytest.mark.slow
def test_a_kill_during_warm_up_resumes_the_warm_up(tmp_path, capsys):
    run = tmp_path / "w"
    argv = [
        sys.executable,
        str(ROOT / "agents" / "train.py"),
        *TINY,
        "--pretrain-epochs",
        "6",
        "--logdir",
        str(tmp_path),
        "--run-name",
        "w",
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (run / "checkpoint.pt").exists() and load_checkpoint(run)["phase"] == "warmup":
            break
        time.sleep(0.1)
    assert proc.poll() is None, "the warm-up ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = load_checkpoint(run)["warmup"]["epochs_done"]
    assert 1 <= done < 6
    # resumed in this process: what is tested is what the killed process left
    capsys.readouterr()
    train.main(["--resume", str(run), "--no-progress", "--device", "cpu"])
    resumed = capsys.readouterr().out
    assert f"resumed the warm-up of {run} after epoch {done} of 6" in resumed
    assert "warm-up epoch 6/6" in resumed and load_checkpoint(run)["phase"] == "train"


def test_a_run_killed_before_any_checkpoint_says_so(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps({"algo": "ppo", "run": {}, "env": {}, "agent": {}}))
    with pytest.raises(SystemExit, match="stopped before it wrote its first one"):
        train.main(["--resume", str(tmp_path / "empty"), "--no-progress"])


def test_resume_flags_are_saved_and_the_config_holds_what_ran(tmp_path):
    train.main(TINY + ["--logdir", str(tmp_path), "--run-name", "c", "--algo", "ppo", "--n-steps", "16", "--batch-size", "32"])
    run = tmp_path / "c"
    config = json.loads((run / "config.json").read_text())
    assert config["agent"]["learning_rate"] is None  # the library's default, by choice
    assert config["effective_agent"]["learning_rate"] == pytest.approx(3e-4)  # ... which is recorded as it ran
    train.main(["--resume", str(run), "--total-timesteps", "512", "--no-progress", "--device", "cpu"])
    config = json.loads((run / "config.json").read_text())
    assert config["run"]["total_timesteps"] == 512 and load_checkpoint(run)["timesteps"] >= 512


# ---- bad values --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "settings, message",
    [
        ({"lam": math.inf}, "lam must be >= 0 and finite"),
        ({"lam": math.nan}, "lam must be >= 0 and finite"),
        ({"lam_range": (math.nan, 0.1)}, "lam_range low must be >= 0 and finite"),
        ({"lam_range": (0.0, math.inf)}, "lam_range high must be >= 0 and finite"),
        ({"alpha": math.inf}, "alpha must be >= 0 and finite"),
        ({"beta": -math.nan}, "beta must be >= 0 and finite"),
        ({"lam": "0.1"}, "lam must be a number, got str"),
        ({"max_steps": 2.7}, "max_steps must be an integer, got float 2.7"),
        ({"cotrain_every": "64"}, "cotrain_every must be an integer"),
        ({"num_envs": 4}, "num_envs is not a setting of the single-sample env: for N episodes at once use gym.make_vec"),
        ({"no_such_setting": 1}, "no_such_setting"),
    ],
)
def test_bad_settings_are_refused_by_name(settings, message):
    with pytest.raises((ValueError, TypeError), match=message.replace("(", r"\(").replace(")", r"\)")):
        gym.make("DynaLay-v0", **settings)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--lam", "inf"], "lam must be >= 0 and finite"),
        (["--lam-range", "nan,0.1"], "lam_range low must be >= 0 and finite"),
        (["--beta", "nan"], "beta must be >= 0 and finite"),
        (["--device", "tpu"], "--device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got 'tpu'"),
        (["--max-steps", "2.7"], "argument --max-steps: invalid int value: '2.7'"),
    ],
)
def test_bad_flags_are_refused_by_name(argv, message, tmp_path, capsys):
    # in process (test_agents.py runs one refusal from a shell): the same main() a shell runs
    assert message in refusal(train.main, [*argv, "--logdir", str(tmp_path), "--run-name", "x"], capsys)
    assert not (tmp_path / "x").exists()


def test_a_yaml_list_where_a_number_belongs_is_refused_by_name(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("lam: [0.1, 0.2]\n")
    with pytest.raises(SystemExit, match=r"lam must be float, got list \[0.1, 0.2\]"):
        train.main(["--config", str(cfg)])


def test_every_face_refuses_float_actions_alike():
    venv = DynaLayVectorEnv(4, dataset="digits", pretrain_epochs=0, cotrain=False)
    venv.reset(seed=0)
    for actions in (torch.tensor([0.0, 1.0, 2.0, 3.5]), torch.tensor([0.0, 1.0, 2.0, 3.0]), np.array([0.0, 1.0, 2.0, 3.0])):
        with pytest.raises(ValueError, match="actions must be integers in"):
            venv.step(actions)
    env = DynaLayEnv(dataset="digits", pretrain_epochs=0, cotrain=False)
    env.reset(seed=0)
    for action in (1.0, np.float32(2), True):
        with pytest.raises(ValueError, match="actions must be integers in"):
            env.step(action)
    env.step(np.int64(0))  # integers of any kind are fine


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"x": np.zeros((6, 3), np.float32), "y": np.array([0, 1, 0, 1, 0, 10**9])}, "map them to a dense range"),
        ({"x": np.zeros((2, 3), np.float32), "y": np.array([0, 1])}, "the test split has no samples"),
        (
            {
                "x": np.zeros((6, 3), np.float32),
                "y": np.zeros(6, np.int64),
                "x_test": np.zeros((0, 3), np.float32),
                "y_test": np.zeros(0, np.int64),
            },
            "the test split has no samples",
        ),
        ({"x": np.zeros((6, 0), np.float32), "y": np.zeros(6, np.int64)}, "have no features"),
        ({"x": np.array([[1, 2], [3, 10**8]] * 3), "y": np.zeros(6, np.int64)}, "vocabulary of 100000001 entries"),
    ],
)
def test_npz_that_would_fail_later_is_refused_at_load_time(arrays, message, tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=message):
        load_npz(path)


def test_env_config_accepts_numpy_numbers():
    config = EnvConfig(lam=np.float32(0.25), max_steps=np.int64(4), cotrain_every=np.int32(8))
    assert config.lam == 0.25 and config.max_steps == 4 and isinstance(config.max_steps, int)
