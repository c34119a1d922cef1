"""A user's own task: register_dataset / register_model make a dataset and a main model usable by
name everywhere (gym faces, agents/train.py, evaluation and baselines), and refuse what the
environment could not use, saying what to add."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import load_script
from torch import nn

from dynalay_env import DynaLaySB3VecEnv  # importing dynalay_env registers DynaLay-v0
from main_models import (
    DATASETS,
    MAIN_MODELS,
    OFFLINE_DATASETS,
    TRAINING_GRADS,
    ContractiveTanhBlock,
    DatasetSplits,
    FPILayer,
    FPINetwork,
    build_main_model,
    default_model,
    load_dataset,
    register_dataset,
    register_model,
    unregister_dataset,
    unregister_model,
)


@pytest.fixture(autouse=True)
def registries():
    """Whatever a test registers is removed after it, so that other tests see the built-in registries."""
    datasets, models = set(DATASETS), set(MAIN_MODELS)
    yield
    for name in set(DATASETS) - datasets:
        unregister_dataset(name)
    for name in set(MAIN_MODELS) - models:
        unregister_model(name)
    assert set(DATASETS) == datasets and set(MAIN_MODELS) == models and set(TRAINING_GRADS) == models


def _tiny_loader(data_dir: str | None = None, *, seed: int = 0) -> DatasetSplits:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((96, 6)).astype(np.float32)
    y = (x[:, 0] * x[:, 1] > 0).astype(np.int64)
    return DatasetSplits.from_arrays("tiny", x, y, slice(0, 64), slice(64, 96), num_classes=2, meta={})


def _tiny_builder(splits: DatasetSplits, *, hidden: int = 8) -> FPINetwork:
    features = splits.input_shape[0]
    return FPINetwork(
        nn.Linear(features, hidden),
        [FPILayer(ContractiveTanhBlock(hidden, hidden)) for _ in range(2)],
        nn.Linear(hidden, splits.num_classes),
        stem_flops=2 * features * hidden,
        head_flops=2 * hidden * 2,
        summary_bins=4,
    )


def _register_tiny() -> None:
    register_dataset("tiny", _tiny_loader)
    register_model("tiny-net", _tiny_builder, input_kind="flat", training_grad="phantom")


def test_the_example_trains_ppo_on_its_own_task_and_prints_the_baselines(tmp_path, capsys):
    example = load_script("examples/own_task.py")
    result = example.main(["--total-timesteps", "256", "--pretrain-epochs", "1", "--imitation-samples", "0", "--logdir", str(tmp_path)])
    out = capsys.readouterr().out
    for row in (
        "ppo agent",
        "FPI on every layer",
        "plain pass (NOP)",
        "cheapest fixed path as accurate",
        "confidence rule as accurate",
        "test accuracy by k (parity of k signs)",
    ):
        assert row in out, row
    assert result["algo"] == "ppo" and result["timesteps"] >= 256 and 0 <= result["accuracy"] <= 1
    assert 0 < result["compute_fraction"] and 0 <= result["fpi_all_accuracy"] <= 1
    baselines = result["baselines"]
    assert baselines["agent"]["accuracy"] == result["accuracy"]
    assert baselines["fpi_all"]["compute_fraction"] == pytest.approx(1.0)
    assert 0 < baselines["plain"]["compute_fraction"] < 1 and 0 <= baselines["plain"]["accuracy"] <= 1
    assert set(result["per_difficulty"]) == {0, 1, 2}  # one level per k, from the example's DatasetSplits
    (run,) = tmp_path.glob("ppo-noisy-parity-s1-*")  # train.py's default run name
    saved = json.loads((run / "eval.json").read_text())
    assert saved["accuracy"] == pytest.approx(result["accuracy"])
    config = json.loads((run / "config.json").read_text())
    assert config["env"]["dataset"] == "noisy-parity" and config["env"]["model"] == "tiny-fpi"


def test_gym_faces_build_and_step_a_registered_dataset_and_model():
    _register_tiny()
    assert "tiny" in OFFLINE_DATASETS and TRAINING_GRADS["tiny-net"] == "phantom"
    splits = load_dataset("tiny")
    assert default_model(splits) == "mlp"  # a registered model is only used when named
    assert build_main_model(splits, model="tiny-net", hidden=4).layers[0].block.dim == 4  # builder options pass through

    env = gym.make("DynaLay-v0", dataset="tiny", model="tiny-net", pretrain_epochs=1, progress=False, max_steps=3)
    engine = env.unwrapped.engine
    assert engine.model_name == "tiny-net" and engine.num_layers == 2 and engine.model.layers[0].grad == "phantom"
    obs, _ = env.reset(seed=0)
    assert obs.shape == env.observation_space.shape == (engine.layout.size,) and env.action_space.n == 3
    _, reward, terminated, _, _ = env.step(1)  # FPI on layer 1 costs compute
    assert reward < 0 and not terminated
    _, reward, terminated, _, info = env.step(0)  # NOP answers
    assert terminated and info["compute"] > 1
    env.close()

    vec = gym.make_vec(
        "DynaLay-v0",
        num_envs=4,
        vectorization_mode="vector_entry_point",
        dataset="tiny",
        model="tiny-net",
        pretrain_epochs=0,
        progress=False,
    )
    obs, _ = vec.reset(seed=0)
    obs, reward, *_ = vec.step(np.array([0, 1, 2, 0]))
    assert obs.shape == (4, engine.layout.size) and reward.shape == (4,)
    vec.close()
    sb3 = DynaLaySB3VecEnv(4, dataset="tiny", model="tiny-net", pretrain_epochs=0, progress=False)
    assert sb3.reset().shape == (4, engine.layout.size)
    sb3.step(np.array([2, 0, 1, 0]))
    sb3.close()


def test_a_model_without_flops_or_activations_is_refused_saying_what_to_add():
    register_dataset("tiny", _tiny_loader)
    register_model("plain-mlp", lambda splits: nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2)), input_kind="flat")
    with pytest.raises(TypeError, match=r"(?s)'plain-mlp'.*Sequential.*straightforward_flops.*layer_summaries.*FPINetwork.*own_task\.py"):
        build_main_model(load_dataset("tiny"), model="plain-mlp")
    with pytest.raises(TypeError, match="straightforward_flops"):  # through the environment too
        gym.make("DynaLay-v0", dataset="tiny", model="plain-mlp", pretrain_epochs=0, progress=False)

    class NoFlopsBlock(nn.Module):
        def forward(self, z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
            return torch.tanh(0.5 * z + u)

    register_model(
        "no-flops",
        lambda s: FPINetwork(nn.Linear(6, 8), [FPILayer(NoFlopsBlock())], nn.Linear(8, 2), stem_flops=96, head_flops=32),
        input_kind="flat",
    )
    with pytest.raises(TypeError, match=r"'no-flops'.*NoFlopsBlock.*must report flops_per_sample\(\) -> int.*add it to the block"):
        build_main_model(load_dataset("tiny"), model="no-flops")

    register_model(
        "wrong-head",
        lambda s: FPINetwork(nn.Linear(6, 8), [FPILayer(ContractiveTanhBlock(8, 8))], nn.Linear(8, 5), stem_flops=96, head_flops=80),
        input_kind="flat",
    )
    with pytest.raises(ValueError, match=r"'wrong-head'.*\(2, 5\).*2 classes"):
        build_main_model(load_dataset("tiny"), model="wrong-head")

    class OldReplay(FPINetwork):  # a model of its own whose path replay cannot start from a given plain pass
        def run_paths(self, x: torch.Tensor, paths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return super().run_paths(x, paths)

    layers = [FPILayer(ContractiveTanhBlock(8, 8))]
    register_model(
        "old-replay", lambda s: OldReplay(nn.Linear(6, 8), layers, nn.Linear(8, 2), stem_flops=96, head_flops=32), input_kind="flat"
    )
    with pytest.raises(TypeError, match=r"'old-replay'.*run_paths.*start=.*plain pass"):
        build_main_model(load_dataset("tiny"), model="old-replay")

    register_model("exact-tanh", _tiny_builder, input_kind="flat", training_grad="exact")
    with pytest.raises(ValueError, match="registered with training_grad 'exact'.*exact_fixed_point"):
        build_main_model(load_dataset("tiny"), model="exact-tanh")


def test_registering_a_name_twice_is_refused_unless_replaced():
    _register_tiny()
    with pytest.raises(ValueError, match="dataset 'tiny' is already registered; pass replace=True"):
        register_dataset("tiny", _tiny_loader)
    with pytest.raises(ValueError, match="model 'tiny-net' is already registered; pass replace=True"):
        register_model("tiny-net", _tiny_builder, input_kind="flat")
    register_dataset("tiny", _tiny_loader, offline=False, replace=True)
    assert "tiny" not in OFFLINE_DATASETS
    register_model("tiny-net", _tiny_builder, input_kind="flat", replace=True)
    assert TRAINING_GRADS["tiny-net"] == "implicit"
    with pytest.raises(ValueError, match="'digits' is built in"):
        register_dataset("digits", _tiny_loader, replace=True)
    with pytest.raises(ValueError, match="'mlp' is built in"):
        register_model("mlp", _tiny_builder, input_kind="flat", replace=True)
    with pytest.raises(ValueError, match="'mlp' is built in"):
        unregister_model("mlp")


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: register_dataset("", _tiny_loader), TypeError, "non-empty string"),
        (lambda: register_dataset("my data", _tiny_loader), ValueError, "whitespace"),
        (lambda: register_dataset("mine.npz", _tiny_loader), ValueError, r"ends in \.npz"),
        (lambda: register_dataset("mine", "not callable"), TypeError, "must be callable"),
        (lambda: register_dataset("mine", lambda: None), TypeError, r"loader\(data_dir, seed=seed\).*data_dir parameter"),
        (lambda: register_model("m", _tiny_builder, input_kind="table"), ValueError, "input_kind must be one of"),
        (lambda: register_model("m", _tiny_builder, input_kind="flat", training_grad="magic"), ValueError, "training_grad must be one of"),
        (
            lambda: register_model("m", lambda: None, input_kind="flat"),
            TypeError,
            r"builder\(splits, \*\*options\).*one positional parameter",
        ),
    ],
)
def test_bad_names_and_arguments_are_refused_naming_the_problem(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_a_loader_returning_the_wrong_type_is_refused():
    register_dataset("arrays", lambda data_dir, seed=0: {"x": np.zeros((4, 2)), "y": np.zeros(4)})
    with pytest.raises(TypeError, match=r"'arrays'.*returned a dict, not a DatasetSplits.*DatasetSplits\.from_arrays"):
        load_dataset("arrays")
    with pytest.raises(TypeError, match="not a DatasetSplits"):  # gym.make reports the same
        gym.make("DynaLay-v0", dataset="arrays", pretrain_epochs=0, progress=False)

    def relabelled(data_dir: str | None = None, *, seed: int = 0) -> DatasetSplits:
        splits = _tiny_loader(data_dir, seed=seed)
        splits.meta["input_kind"] = "table"
        return splits

    register_dataset("relabelled", relabelled)
    with pytest.raises(ValueError, match=r"'relabelled'.*input_kind'\] must be one of"):
        load_dataset("relabelled")
