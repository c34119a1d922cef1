"""The warm-up cache: a second gym.make with the same settings loads the first one's warm-up instead
of training again, gets exactly the main model an uncached warm-up gives, and N envs built at once,
in subprocesses too, share one warm-up."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import dynalay_env  # noqa: F401  (registers DynaLay-v0)
from dynalay_env import EnvConfig, cache_directory, make_engine
from main_models import MainModelTrainer

ROOT = Path(__file__).resolve().parent.parent
TINY = {"dataset": "digits", "pretrain_epochs": 1, "progress": False}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    directory = tmp_path / "cache"
    monkeypatch.setenv("DYNALAY_CACHE_DIR", str(directory))
    monkeypatch.delenv("DYNALAY_WARMUP_CACHE", raising=False)
    return directory


@pytest.fixture
def warm_ups(monkeypatch):
    """Counts the warm-ups that actually train."""
    calls = []
    original = MainModelTrainer.warm_up

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(MainModelTrainer, "warm_up", counting)
    return calls


def weights(env) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in env.unwrapped.engine.model.state_dict().items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_a_second_gym_make_loads_the_warm_up_and_gets_the_same_main_model(cache, warm_ups, capfd):
    first = gym.make("DynaLay-v0", **TINY)
    assert len(warm_ups) == 1
    said = capfd.readouterr().err
    assert said.count("DynaLay: warming up") == 1 and str(cache) in said and "pretrain_epochs=N shortens it, 0 skips it" in said
    assert len(list(cache.glob("*.pt"))) == 1

    second = gym.make("DynaLay-v0", **TINY)
    assert len(warm_ups) == 1, "the second gym.make trained again"
    assert "warming up" not in capfd.readouterr().err
    assert_same(weights(first), weights(second))
    # the optimizer continues from the same state too, so co-training goes on identically
    s1, s2 = first.unwrapped.engine.trainer.state_dict(), second.unwrapped.engine.trainer.state_dict()
    for state1, state2 in zip(s1["optimizer"]["state"].values(), s2["optimizer"]["state"].values()):
        assert torch.equal(state1["exp_avg"], state2["exp_avg"]) and torch.equal(state1["exp_avg_sq"], state2["exp_avg_sq"])

    uncached = gym.make("DynaLay-v0", **TINY, warmup_cache=False)
    assert len(warm_ups) == 2 and len(list(cache.glob("*.pt"))) == 1
    assert_same(weights(first), weights(uncached))

    # a co-training update from the loaded optimizer state (applied when the optimizer is first made) is the same update
    for env in (second, uncached):
        engine = env.unwrapped.engine
        engine.trainer.step(torch.arange(16), torch.full((16, engine.max_steps), 2, dtype=torch.long))
    assert_same(weights(second), weights(uncached))

    # the same episodes and rewards follow from either
    for env in (second, uncached):
        env.reset(seed=3)
    for action in (1, 2, 0):
        out_cached, out_trained = second.step(action), uncached.step(action)
        np.testing.assert_array_equal(out_cached[0], out_trained[0])
        assert out_cached[1] == out_trained[1]


def test_a_warm_up_leaves_the_global_rng_untouched(cache):
    """Why a loaded warm-up continues exactly like a trained one: training draws only from its own
    generator, so skipping it changes no other draw of the process."""
    torch.manual_seed(5)
    before = torch.get_rng_state()
    make_engine(EnvConfig(**TINY, warmup_cache="off"))
    assert torch.equal(before, torch.get_rng_state())


def test_every_setting_that_decides_the_warm_up_gets_its_own_entry(cache, warm_ups):
    gym.make("DynaLay-v0", **TINY)
    gym.make("DynaLay-v0", **TINY, seed=1)
    gym.make("DynaLay-v0", **TINY, warmup_stop_prob=0.5)
    gym.make("DynaLay-v0", **TINY, main_lr=2e-3)
    assert len(warm_ups) == 4 and len(list(cache.glob("*.pt"))) == 4
    # settings the warm-up does not read share it
    gym.make("DynaLay-v0", **TINY, lam=0.1, max_steps=4, observation=("activations", "lam"))
    gym.make("DynaLay-v0", **TINY, lam=0.1)
    assert len(warm_ups) == 5  # max_steps is the warm-up's path length: its own entry; lambda and the observation are not


def test_the_data_itself_is_part_of_the_key(cache, warm_ups, tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "mine.npz"
    np.savez(path, x=rng.normal(size=(60, 5)).astype(np.float32), y=rng.integers(0, 2, 60))
    gym.make("DynaLay-v0", dataset=str(path), pretrain_epochs=1, progress=False)
    gym.make("DynaLay-v0", dataset=str(path), pretrain_epochs=1, progress=False)
    assert len(warm_ups) == 1
    np.savez(path, x=rng.normal(size=(60, 5)).astype(np.float32), y=rng.integers(0, 2, 60))  # same name, new contents
    gym.make("DynaLay-v0", dataset=str(path), pretrain_epochs=1, progress=False)
    assert len(warm_ups) == 2 and len(list(cache.glob("*.pt"))) == 2


def test_the_cache_can_be_turned_off(cache, warm_ups, monkeypatch, tmp_path):
    monkeypatch.setenv("DYNALAY_WARMUP_CACHE", "0")
    assert cache_directory(None) is None
    gym.make("DynaLay-v0", **TINY)
    gym.make("DynaLay-v0", **TINY)
    assert len(warm_ups) == 2 and not cache.exists()
    # a directory named in the settings is used even so
    gym.make("DynaLay-v0", **TINY, warmup_cache=str(tmp_path / "chosen"))
    assert len(list((tmp_path / "chosen").glob("*.pt"))) == 1
    assert cache_directory("off") is None and cache_directory(str(tmp_path)) == tmp_path


def test_an_unusable_cache_directory_warms_up_without_the_cache(cache, warm_ups, tmp_path, capfd):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    env = gym.make("DynaLay-v0", **TINY, warmup_cache=str(blocked / "cache"))
    assert len(warm_ups) == 1 and "cannot use the warm-up cache" in capfd.readouterr().err
    assert_same(weights(env), weights(gym.make("DynaLay-v0", **TINY, warmup_cache="off")))


def test_the_default_cache_lives_in_the_users_cache_directory(monkeypatch, tmp_path):
    monkeypatch.delenv("DYNALAY_CACHE_DIR", raising=False)
    monkeypatch.delenv("DYNALAY_WARMUP_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_directory(None) == tmp_path / "dynalay"


def test_a_corrupt_or_crafted_cache_file_is_refused_naming_it(cache, tmp_path):
    gym.make("DynaLay-v0", **TINY)
    (path,) = cache.glob("*.pt")
    path.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=f"warm-up cache {path}.*delete the file"):
        gym.make("DynaLay-v0", **TINY)

    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path.write_bytes(pickle.dumps({"key": Exploit()}))
    with pytest.raises(ValueError, match="warm-up cache"):
        gym.make("DynaLay-v0", **TINY)
    assert not marker.exists()


@pytest.mark.slow
def test_envs_built_at_once_in_subprocesses_share_one_warm_up(cache):
    """Four processes ask for the same warm-up together: one trains it, the others wait and load."""
    script = (
        "import sys, torch, gymnasium as gym, dynalay_env\n"
        "env = gym.make('DynaLay-v0', dataset='digits', pretrain_epochs=1, progress=False)\n"
        "torch.save({k: v for k, v in env.unwrapped.engine.model.state_dict().items()}, sys.argv[1])\n"
    )
    env = {**os.environ, "DYNALAY_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT)}
    outputs = [cache.parent / f"weights{i}.pt" for i in range(4)]
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(out)], env=env, stderr=subprocess.PIPE, text=True, cwd=ROOT) for out in outputs
    ]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errs
    assert sum(err.count("DynaLay: warming up") for err in errs) == 1, errs
    first = torch.load(outputs[0], weights_only=True)
    for out in outputs[1:]:
        assert_same(first, torch.load(out, weights_only=True))
