"""Harder than training: a run trained on one size or length evaluated on another with no
retraining (agents.evaluate.load_run(data=...)), parity's length range, and benchmarks/transfer.py."""

from __future__ import annotations

import json
import math
from functools import partial

import numpy as np
import pytest
import torch
from conftest import load_script, quiet_run_flags

from agents import train
from agents.checkpoint import CheckpointError, load_checkpoint
from agents.evaluate import evaluate_run, load_run, load_test_data, parse_options
from agents.evaluate import main as evaluate_main
from dynalay_env import evaluate_policy
from main_models import build_main_model, register_dataset, unregister_dataset
from main_models.data.grid_lookup import load_grid_lookup
from main_models.data.offline import load_parity

transfer = load_script("benchmarks/transfer.py")

TINY = ["--algo", "ppo", "--imitation-samples", "0", "--pretrain-epochs", "0", "--total-timesteps", "64", "--num-envs", "4"]
TINY += ["--n-steps", "8", "--batch-size", "32", "--checkpoint-freq", "0", "--log-every", "64"]
SMALL_GRIDS = {"num_train": 1, "num_test": 48}


TINY_GRIDS = "tiny-grid-lookup"
"""grid-lookup with 64 train and 48 test samples (6x6 unless told), registered for these tests:
the same task and loader options, at a size a test trains and evaluates in seconds."""


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    """A tiny run trained on 6x6 grid-lookup grids."""
    register_dataset(TINY_GRIDS, partial(load_grid_lookup, num_train=64, num_test=48))
    logdir = tmp_path_factory.mktemp("transfer")
    try:
        train.main(TINY + ["--dataset", TINY_GRIDS, "--warmup-cache", "off"] + quiet_run_flags(logdir, "grid"))
        yield logdir / "grid"
    finally:
        unregister_dataset(TINY_GRIDS)


def test_grid_run_trained_on_6x6_evaluates_on_8x8_with_the_cost_model_of_8x8(grid_run):
    data = load_test_data(TINY_GRIDS, {"size": 8})
    loaded = load_run(grid_run, "cpu", data)
    model = loaded.engine.model
    assert loaded.engine.splits.input_shape == (8, 8)
    # the trained weights, in a model whose FLOPs and iteration cap are those of an 8x8 grid
    trained = load_checkpoint(grid_run)["engine"]["model"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in trained.items())
    fresh8 = build_main_model(data)
    assert (
        model.straightforward_flops == fresh8.straightforward_flops > build_main_model(load_test_data(TINY_GRIDS, {})).straightforward_flops
    )
    assert [layer.max_iter for layer in model.layers] == [9, 9, 9]  # max(H, W) + 1: the row solve reaches the fixed point
    # compute is charged in plain passes of the 8x8 input: the plain path is 1, FPI on L1 adds its solve, as the cost model says
    plain = evaluate_policy(model, data, [], max_steps=loaded.engine.max_steps)
    assert plain.compute == pytest.approx(1.0)
    one = evaluate_policy(model, data, [1], max_steps=loaded.engine.max_steps)
    paths = torch.ones(48, 1, dtype=torch.long)
    with torch.no_grad():
        _, iterations = model.run_paths(data.x_test, paths, per_step=True)
    # rows of 8 cells take more iterations than a 6x6 model's cap (7) would have allowed them
    assert int(iterations.max()) > 7
    expected = 1.0 + model.path_flops(paths, iterations) / model.straightforward_flops
    assert one.compute == pytest.approx(float(expected.mean()), rel=1e-6)
    # the whole evaluation on that set, its FPI-on-every-layer reference measured there
    out = evaluate_run(grid_run, device="cpu", figures=False, timing_repeats=0, data=data)
    result = out["results"][0]
    assert out["test_data"]["size"] == 8 and result["num_samples"] == 48
    assert result["compute_fraction"] == pytest.approx(result["compute"] / result["fpi_all_compute"])
    assert set(result["per_difficulty"]) <= {0, 1, 2, 3}


def test_a_6x6_module_cannot_run_8x8_grids_which_is_why_the_model_is_rebuilt():
    model = build_main_model(load_test_data("grid-lookup", SMALL_GRIDS))
    with pytest.raises(RuntimeError):
        model(load_test_data("grid-lookup", {"size": 8, **SMALL_GRIDS}).x_test[:2])


def test_evaluate_cli_takes_test_dataset_options_and_refuses_data_the_run_does_not_fit(grid_run, capsys):
    out = evaluate_main([str(grid_run), "--test-dataset-options", "size=10", "num_test=32", "--json", "--no-figures"])
    assert out["test_data"]["size"] == 10 and out["results"][0]["num_samples"] == 32
    assert json.loads(capsys.readouterr().out)["test_data"]["size"] == 10
    with pytest.raises(CheckpointError, match="does not fit the test data 'parity'"):
        load_run(grid_run, "cpu", load_parity(num_train=1, num_test=8))
    with pytest.raises(SystemExit, match="takes no option"):
        evaluate_main([str(grid_run), "--test-dataset-options", "colour=red", "--no-figures"])
    assert parse_options(["size=8", "mix=0.5,0.5,0,0", "guard=false"]) == {"size": 8, "mix": "0.5,0.5,0,0", "guard": False}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_options(["size"])


def test_parity_length_range_is_seeded_in_range_and_leaves_the_defaults_alone():
    harder = load_parity(seed=4, num_train=50, num_test=400, min_len=16, max_len=30)
    lengths = (harder.x_test != 0).sum(dim=1)
    assert harder.x_test.shape == (400, 30) and int(lengths.min()) >= 16 and int(lengths.max()) <= 30
    assert set(range(16, 31)) == set(lengths.tolist())
    # levels are 5 equal buckets of 16..30: lengths 16-18 at level 0, ..., 28-30 at level 4
    assert torch.equal(harder.difficulty_test, (lengths - 16) // 3)
    assert harder.meta["min_len"] == 16 and "16..30" in harder.meta["difficulty"]
    parity = (harder.x_test == 2).sum(dim=1) % 2
    assert torch.equal(parity, harder.y_test)
    again = load_parity(seed=4, num_train=50, num_test=400, min_len=16, max_len=30)
    assert torch.equal(again.x_test, harder.x_test)
    # the default is min_len 1, and the same data as ever: lengths 1..15, 5 buckets of 3
    default, explicit = load_parity(seed=4), load_parity(seed=4, min_len=1)
    assert torch.equal(default.x_train, explicit.x_train) and torch.equal(default.difficulty_test, explicit.difficulty_test)
    assert "min_len" not in default.meta and default.meta["difficulty"] == "length bucket: 5 equal buckets of lengths 1..15"
    base = (default.x_test != 0).sum(dim=1)
    assert int(base.min()) == 1 and int(base.max()) == 15 and torch.equal(default.difficulty_test, (base - 1) // 3)
    for bad in (0, 31):
        with pytest.raises(ValueError, match="min_len"):
            load_parity(min_len=bad, max_len=30)


def test_parity_model_for_15_runs_on_30_once_rebuilt_with_the_cap_and_flops_of_30():
    short, long = load_parity(num_train=20, num_test=20), load_parity(num_train=20, num_test=64, min_len=16, max_len=30)
    trained = build_main_model(short)
    model = build_main_model(long)
    model.load_state_dict(trained.state_dict())
    assert [layer.max_iter for layer in model.layers] == [31] * 3
    assert model.straightforward_flops > trained.straightforward_flops
    # a string of n bits needs about n + 1 iterations: with the cap of 15 the long ones would be cut short
    report = evaluate_policy(model, long, [1], max_steps=3)
    assert report.compute > evaluate_policy(trained, short, [1], max_steps=3).compute
    fixed_point = model.layers[0].block.exact_fixed_point(model.stem(long.x_test))
    assert fixed_point.shape[1] == 30


def test_tune_rule_takes_the_cheapest_point_as_accurate_as_fpi_all_or_else_the_most_accurate():
    curve = [
        {"tau": 0.5, "order": [1, 2, 3], "accuracy": 0.90, "compute": 1.0, "compute_fraction": 0.1},
        {"tau": 0.9, "order": [1, 2, 3], "accuracy": 0.99, "compute": 3.0, "compute_fraction": 0.3},
        {"tau": 0.8, "order": [2, 3, 1], "accuracy": 0.997, "compute": 2.5, "compute_fraction": 0.25},
        {"tau": 1.0, "order": [2, 3, 1], "accuracy": 0.999, "compute": 9.0, "compute_fraction": 0.9},
    ]
    assert transfer.tune_rule(curve, 1.0) == {"tau": 0.8, "order": [2, 3, 1], "reaches_fpi_all_accuracy": True}
    assert transfer.tune_rule(curve[:2], 1.0) == {"tau": 0.9, "order": [1, 2, 3], "reaches_fpi_all_accuracy": False}


def _set(agent: tuple[float, float, float], rule: tuple[float, float], fpi: float, at: float | None, steps: float = 0.4) -> dict:
    return {
        "agent": {"accuracy": agent[0], "compute": agent[1], "compute_fraction": agent[2], "fpi_steps": steps},
        "rule": {"accuracy": rule[0], "compute_fraction": rule[1]},
        "fpi_all": {"accuracy": fpi},
        "rule_accuracy_at_agent_compute": at,
    }


def test_targets_read_each_harder_set_against_the_training_range():
    sets = {
        "train range": _set((0.99, 2.0, 0.3), (0.99, 0.31), 0.995, 0.98),
        "8x8": _set((0.97, 2.5, 0.28), (0.95, 0.30), 0.985, 0.96),
        "10x10": _set((0.90, 3.0, 0.25), (0.93, 0.20), 0.95, None),
    }
    t = transfer.targets(sets)
    assert t["agent_compute_rises"] is True and t["agent_fpi_steps_rise"] is False  # the solver's doing, not the agent's
    assert t["8x8"]["agent_within_2_points_of_fpi_all"] and t["8x8"]["agent_above_rule_curve_at_its_compute"]
    assert t["8x8"]["agent_dominates_tuned_rule"] and t["8x8"]["fpi_all_accuracy_drop"] == pytest.approx(0.01)
    assert not t["10x10"]["agent_within_2_points_of_fpi_all"] and t["10x10"]["agent_above_rule_curve_at_its_compute"] is None
    assert not t["10x10"]["agent_dominates_tuned_rule"] and t["10x10"]["agent_compute_ratio_to_train_range"] == pytest.approx(1.5)
    sets["10x10"]["agent"]["compute"] = 2.4
    assert transfer.targets(sets)["agent_compute_rises"] is False


def test_sets_run_from_the_training_range_to_the_biggest_inputs_whatever_the_file_order():
    sets = {name: {"input_shape": shape} for name, shape in [("10x10", [10, 10]), ("8x8", [8, 8]), ("train range", [6, 6])]}
    assert transfer.set_order(sets) == ["train range", "8x8", "10x10"]
    assert transfer.set_order({"lengths 16-30": {"input_shape": [30]}, "train range": {"input_shape": [15]}})[0] == "train range"


def test_level_names_say_what_each_level_holds():
    assert transfer.level_names("grid-lookup", {"size": 8}, [0, 3]) == {0: "local", 3: "grid"}
    names = transfer.level_names("parity", {"min_len": 16, "max_len": 30}, [0, 1, 4])
    assert names == {0: "lengths 16-18", 1: "lengths 19-21", 4: "lengths 28-30"}
    assert transfer.level_names("parity", {}, [0, 4]) == {0: "lengths 1-3", 4: "lengths 13-15"}


@pytest.mark.slow
def test_transfer_quick(tmp_path, capsys):
    """The benchmark end to end at smoke size on grid-lookup: trained on 6x6, every set evaluated, the
    targets, the Markdown, and a second run taken from the file. Both run in this process, through the
    script's main (what its command line runs; a new interpreter would cost seconds of imports)."""
    transfer.main(["--quick", "--tasks", "grid-lookup", "--seeds", "0", "--json", "--out-dir", str(tmp_path)])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["benchmark"] == "transfer" and (tmp_path / "transfer.json").stat().st_size > 0
    entry = out["per_seed"][0]
    assert transfer.set_order(entry["sets"]) == ["train range", "8x8", "10x10"]
    assert [entry["sets"][n]["input_shape"] for n in ("train range", "8x8", "10x10")] == [[6, 6], [8, 8], [10, 10]]
    for s in entry["sets"].values():
        assert s["num_samples"] == transfer.QUICK_LIMIT
        assert s["fpi_all"]["compute_fraction"] == pytest.approx(1.0) and s["plain"]["compute"] == pytest.approx(1.0)
        for policy in transfer.POLICIES:
            assert sum(s[policy]["action_frequency"]) == pytest.approx(1.0)
            assert sum(level["count"] for level in s[policy]["per_level"].values()) == transfer.QUICK_LIMIT
    # FPI on every layer costs more plain passes on bigger grids: its solves need more iterations
    fpi = [entry["sets"][n]["fpi_all"]["compute"] for n in ("train range", "8x8", "10x10")]
    assert fpi[0] < fpi[1] < fpi[2]
    assert entry["rule"]["order"] and 0 <= entry["rule"]["tau"] <= 1
    t = out["summary"]["grid-lookup"]
    assert set(t["targets"]) == {"agent_compute_rises", "agent_fpi_steps_rise", "8x8", "10x10"}
    assert math.isclose(t["sets"]["8x8"]["agent"]["accuracy"]["mean"], entry["sets"]["8x8"]["agent"]["accuracy"])
    # the same command again takes the seed from the file and trains nothing
    transfer.main(["--quick", "--tasks", "grid-lookup", "--seeds", "0", "--out-dir", str(tmp_path)])
    again = capsys.readouterr()
    assert "already in" in again.err and "#### grid-lookup: trained on 6x6 grids" in again.out
    assert np.isfinite(t["sets"]["10x10"]["fpi_all"]["accuracy"]["mean"])
