"""Each benchmark script runs with --quick and prints JSON with its documented keys (marked slow:
deselect with ``-m "not slow"``; they check structure, never timings), and the harness the
scripts share does what they rely on."""

import json
from pathlib import Path

import pytest
import torch
from conftest import load_script, quiet_run_flags, script_json

from main_models.device import local_device

ROOT = Path(__file__).resolve().parent.parent
slow = pytest.mark.slow


@pytest.fixture(scope="module")
def harness():
    return load_script("benchmarks/harness.py")


def test_mean_std_leaves_out_what_a_seed_does_not_have(harness):
    assert harness.mean_std([0.5, None, 0.7, float("nan")]) == {"mean": pytest.approx(0.6), "std": pytest.approx(0.2 / 2**0.5), "n": 2}
    assert harness.mean_std([0.25]) == {"mean": 0.25, "std": 0.0, "n": 1}
    assert harness.mean_std([None, None]) == {"mean": None, "std": 0.0, "n": 0}
    assert harness.stats([{"a": 1.0, "b": 2.0}, {"a": 3.0, "b": None}], ("a", "b")) == {
        "a": {"mean": 2.0, "std": pytest.approx(2**0.5), "n": 2},
        "b": {"mean": 2.0, "std": 0.0, "n": 1},
    }
    assert [
        harness.pm({"mean": 0.5, "std": 0.1, "n": 2}, 2),
        harness.pm({"mean": 0.5, "std": 0.0, "n": 1}),
        harness.pm({"mean": None}),
    ] == ["0.50 ± 0.10", "0.500", "n/a"]
    assert harness.fmt(None) == "n/a" and harness.fmt(1 / 3, 2) == "0.33"
    assert harness.markdown_table(["a", "b"], [[1, "x"]]) == ["| a | b |", "|---|---|", "| 1 | x |"]
    with pytest.raises(SystemExit, match="ran with different plan"):
        harness.by_task([{"dataset": "d", "seed": 0, "plan": 1}, {"dataset": "d", "seed": 1, "plan": 2}], "plan")


def test_per_seed_runs_resume_from_their_result_file(harness, tmp_path):
    ran, written = [], []

    def job(seed: int, setting: float):
        def run() -> dict:
            ran.append((seed, setting))
            return {"dataset": "d", "seed": seed, "value": seed + setting, "plan": ("p",)}

        return harness.Job({"dataset": "d", "seed": seed, "setting": setting}, run)

    def write(result: dict) -> None:
        written.append(len(result["per_seed"]))
        (tmp_path / "b.json").write_text(json.dumps(result))

    summarise = lambda entries: harness.by_task(entries, "plan")  # noqa: E731
    first = harness.collect("b", tmp_path, summarise, write, jobs=[job(0, 0.5), job(1, 0.5)])
    assert ran == [(0, 0.5), (1, 0.5)] and written == [1, 2] and first["seconds"] >= 0
    assert first["per_seed"][0] == {
        "dataset": "d",
        "seed": 0,
        "value": 0.5,
        "plan": ["p"],
        "job": {"dataset": "d", "seed": 0, "setting": 0.5},
    }
    # the same command again runs nothing; a seed with another setting runs
    again = harness.collect("b", tmp_path, summarise, write, jobs=[job(0, 0.5), job(1, 0.25)])
    assert ran[2:] == [(1, 0.25)] and again["per_seed"][0] == first["per_seed"][0]
    merged = harness.collect("b", tmp_path / "m", summarise, lambda r: None, merge=[tmp_path / "b.json"], extra={"note": 1})
    assert merged["merged_from"] == [str(tmp_path / "b.json")] and merged["note"] == 1 and len(merged["per_seed"]) == 2
    with pytest.raises(SystemExit, match="seed 0 appears in both"):
        harness.load_results([tmp_path / "b.json", tmp_path / "b.json"], "b")
    with pytest.raises(SystemExit, match="is not a c result"):
        harness.load_results([tmp_path / "b.json"], "c")


def test_pareto_figure_draws_points_curves_error_bars_and_a_line(harness, tmp_path):
    series = [
        harness.Series([0.2, 0.5], [0.8, 0.9], "s", names=["NOP", "L1"]),
        harness.curve(
            [{"compute_fraction": {"mean": 0.6}, "accuracy": {"mean": 0.95}}, {"compute_fraction": 0.3, "accuracy": 0.85}], "o-", "rule"
        ),
        harness.Series([0.4], [0.9], "o", "agent", xerr=[0.01], yerr=[0.02]),
        harness.Series([0.4], label="target"),
    ]
    assert series[1].x == [0.3, 0.6] and series[1].y == [0.85, 0.95]
    harness.pareto_figure(tmp_path / "p.png", {"a": series, "b": series[:1]}, log_x=True)
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_local_device_gives_each_rank_its_own_gpu():
    assert local_device("cpu", 3) == torch.device("cpu")
    assert local_device("auto", 1) == (torch.device("cuda", 1) if torch.cuda.is_available() else torch.device("cpu"))
    with pytest.raises(ValueError, match="--device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got 'tpu'"):
        local_device("tpu", 0, "--device")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            local_device("cuda", 0, "--device")


def _run(name: str) -> dict:
    return script_json(f"benchmarks/{name}.py", "--quick", "--json")


@slow
def test_env_throughput_quick():
    out = _run("env_throughput")
    assert out["benchmark"] == "env_throughput" and out["cotrain"] is False
    assert [r["num_envs"] for r in out["rows"] if r["device"] == "cpu"] == [1, 64]
    for row in out["rows"]:
        assert {"device", "num_envs", "batched_sps", "sync_sps", "speedup"} <= set(row)
        assert row["batched_sps"] > 0 and row["sync_sps"] > 0
        assert row["speedup"] == pytest.approx(row["batched_sps"] / row["sync_sps"])


@slow
def test_backward_quick():
    out = _run("backward")
    assert out["benchmark"] == "backward"
    modes = {(r["mode"], r["forward_iterations"]) for r in out["rows"]}
    assert modes == {(m, k) for m in ("unrolled", "implicit", "implicit-tol1e-5", "phantom") for k in (10, 30)}
    for row in out["rows"]:
        assert {
            "seconds",
            "backward_seconds",
            "memory_bytes",
            "memory_kind",
            "time_vs_unrolled",
            "backward_time_vs_unrolled",
            "memory_vs_unrolled",
            "cosine_to_unrolled",
        } <= set(row)
        if row["mode"].startswith("implicit"):
            # the implicit gradient is the unrolled one, up to the solvers' tolerances
            assert row["cosine_to_unrolled"] > 0.999 and row["adjoint_iterations"] >= 1
        if row["mode"] == "unrolled":
            assert row["memory_vs_unrolled"] == 1.0
    cotrain = {r["mode"]: r for r in out["cotrain"]}
    assert set(cotrain) == {"unrolled", "implicit", "implicit-tol1e-5", "phantom"}
    assert cotrain["unrolled"]["cosine_to_unrolled"] == pytest.approx(1.0)
    assert cotrain["implicit"]["cosine_to_unrolled"] > 0.999  # where implicit is the layer's default


@slow
def test_solver_quick():
    out = _run("solver")
    assert out["benchmark"] == "solver"
    rows = out["rows"]
    assert {(r["model"], r["solver"], r["tol"]) for r in rows} == {
        (m, s, t) for m in ("mlp", "lstm") for s in ("picard", "anderson-m3", "anderson-m5") for t in (1e-2, 1e-3, 1e-4, 1e-5)
    }
    for r in rows:
        assert {"evaluations_per_solve", "max_evaluations", "converged_fraction", "seconds", "accuracy", "compute"} <= set(r)
        assert 1 <= r["evaluations_per_solve"] <= r["max_evaluations"] <= r["max_iter"]
        assert 0 <= r["converged_fraction"] <= 1 and 0 <= r["accuracy"] <= 1 and r["compute"] > 1
    picard = {(r["model"], r["tol"]): r for r in rows if r["solver"] == "picard"}
    for r in rows:  # every solver reads the same weights; a tighter tol never costs fewer evaluations
        looser = picard.get((r["model"], r["tol"] * 10))
        if r["solver"] == "picard" and looser is not None:
            assert r["evaluations_per_solve"] >= looser["evaluations_per_solve"]


@slow
def test_warmup_paths_quick():
    out = _run("warmup_paths")
    assert out["epochs"] == 2 and [r["stop_prob"] for r in out["rows"]] == [0.0, 1.0]
    for row in out["rows"]:
        for path in ("plain", "fpi_L1", "fpi_L1_L2", "fpi_all"):
            assert 0 <= row[f"{path}_accuracy"] <= 1
        assert row["plain_compute"] == pytest.approx(1.0)
        assert row["fpi_all_compute"] > row["fpi_L1_compute"] > 1.0


@slow
def test_adaptive_vs_fixed_quick(tmp_path, capsys):
    # every call runs in this process, through the script's main (what its command line runs; a new
    # interpreter would cost seconds of imports): the quick run, then calls that read its saved runs and JSON
    avf = load_script("benchmarks/adaptive_vs_fixed.py")
    avf.main(["--quick", "--json", "--out-dir", str(tmp_path)])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["benchmark"] == "adaptive_vs_fixed" and (tmp_path / "pareto.png").stat().st_size > 0
    table = out["summary"]["digits-graded"]
    for name in ("model0", "model1", "model2", "model3"):
        assert {"accuracy", "compute_fraction", "compute"} <= set(table[name])
    assert table["model3"]["compute_fraction"]["mean"] == pytest.approx(1.0)
    assert table["model0"]["compute_fraction"]["mean"] < table["model1"]["compute_fraction"]["mean"] < 1.0
    for algo in ("ppo", "reinforce"):
        agent = table[f"agent_{algo}"]
        keys = (
            "accuracy compute_fraction time_ratio gap_to_model3 oracle_accuracy gap_to_oracle level_compute hard_over_easy_compute target"
        )
        assert set(keys.split()) <= set(agent)
        assert sorted(agent["level_compute"], key=int) == ["0", "1", "2", "3", "4"]
        assert agent["gap_to_oracle"]["mean"] == pytest.approx(agent["accuracy"]["mean"] - agent["oracle_accuracy"]["mean"])
        assert 0 <= agent["oracle_accuracy"]["mean"] <= 1 and agent["compute_fraction"]["mean"] > 0
        assert set(agent["target"]) == {
            "accuracy_within_0.5_points_of_model3",
            "compute_at_most_0.4",
            "wall_time_at_most_0.5",
            "more_compute_on_harder_levels",
            "all",
        }
    assert [p["lam"] for p in table["lambda_agent"]] == [0.0, 0.01]

    # the saved runs reproduce the recorded accuracy and compute (checked by --retime) and get new wall times
    results = str(tmp_path / "adaptive_vs_fixed.json")
    retimed = avf.main(["--merge", results, "--retime", "--timing-repeats", "2", "--json", "--out-dir", str(tmp_path / "retimed")])
    assert retimed["retimed"] is True
    for algo, agent in retimed["per_seed"][0]["agents"].items():
        assert agent["accuracy"] == out["per_seed"][0]["agents"][algo]["accuracy"]
        assert agent["time_ratio_recorded"] == out["per_seed"][0]["agents"][algo]["time_ratio"] and agent["time_ratio"] > 0

    # a second "seed" run elsewhere merges into mean +- std; the same seed twice is refused
    entry = out["per_seed"][0]
    other = json.loads(json.dumps(entry))
    other["seed"] = 1
    other["baselines"]["model0"]["accuracy"] = entry["baselines"]["model0"]["accuracy"] + 0.1
    second = tmp_path / "second.json"
    second.write_text(json.dumps({"benchmark": "adaptive_vs_fixed", "per_seed": [other]}))
    merged_dir = tmp_path / "merged"
    merged = avf.main(["--merge", results, str(second), "--json", "--out-dir", str(merged_dir)])
    acc0 = merged["summary"]["digits-graded"]["model0"]["accuracy"]
    assert acc0["n"] == 2 and acc0["mean"] == pytest.approx(entry["baselines"]["model0"]["accuracy"] + 0.05)
    assert acc0["std"] == pytest.approx(0.1 / 2**0.5)
    capsys.readouterr()
    avf.main(["--merge", str(merged_dir / "adaptive_vs_fixed.json"), "--markdown", "--out-dir", str(tmp_path / "md")])
    stdout = capsys.readouterr().out
    assert "#### digits-graded (2 seeds)" in stdout and f"| Model 0 (plain) | {acc0['mean']:.4f} ± {acc0['std']:.4f} |" in stdout
    with pytest.raises(SystemExit, match="seed 1 appears in both"):
        avf.main(["--merge", str(second), str(second), "--out-dir", str(merged_dir)])


@slow
def test_introspection_quick(tmp_path, capsys):
    """The introspection benchmark end to end at smoke size: the agent beside every baseline, the lambda
    sweep against the fixed-lambda agents, the figures, and a merge of two seeds."""
    out = script_json(
        "benchmarks/introspection.py", "--quick", "--tasks", "digits", "--seeds", "0", "--json", "--out-dir", tmp_path, timeout=900
    )
    assert out["benchmark"] == "introspection"
    for name in ("lambda_sweep.png", "pareto_digits.png", "introspection.json"):
        assert (tmp_path / name).stat().st_size > 0
    entry = out["per_seed"][0]
    comparison = entry["comparison"]
    assert {"fixed_paths", "confidence_curve", "residual_curve", "oracle", "ceiling", "headroom", "targets"} <= set(comparison)
    lams = [p["lam"] for p in entry["lambda_agent"]]
    assert len(lams) >= 6 and lams == sorted(lams)
    assert set(entry["fixed_lambda_agents"]) == {"0.005", "0.05"}
    t = out["summary"]["digits"]
    computes = [p["compute_fraction"]["mean"] for p in t["lambda_agent"]]
    assert t["targets"]["lambda_agent_compute_never_rises"] == all(b <= a + 1e-9 for a, b in zip(computes, computes[1:]))
    assert t["targets"]["lambda_agent_compute_span"] == pytest.approx(computes[0] / computes[-1])
    # a second seed from another process merges into mean +- std; the same seed twice is refused. The
    # merges only read JSON: they run in this process, through the script's main (the run above ran it as a command)
    other = json.loads(json.dumps(entry))
    other["seed"] = 1
    other["comparison"]["agent"]["accuracy"] += 0.1
    second = tmp_path / "second.json"
    second.write_text(json.dumps({"benchmark": "introspection", "per_seed": [other]}))
    introspection = load_script("benchmarks/introspection.py")
    capsys.readouterr()
    introspection.main(["--merge", str(tmp_path / "introspection.json"), str(second), "--out-dir", str(tmp_path / "merged")])
    stdout = capsys.readouterr().out
    assert "#### digits (seeds 0, 1" in stdout and "learnable ceiling" in stdout
    merged = json.loads((tmp_path / "merged" / "introspection.json").read_text())["summary"]["digits"]["agent"]["accuracy"]
    assert merged["n"] == 2 and merged["std"] == pytest.approx(0.1 / 2**0.5)
    with pytest.raises(SystemExit, match="appears twice") as refused:
        introspection.main(["--merge", str(second), str(second), "--out-dir", str(tmp_path / "m2")])
    assert refused.value.code not in (0, None)  # a failing exit status


@slow
def test_observation_ablation_quick():
    out = _run("observation_ablation")
    assert out["benchmark"] == "observation_ablation" and out["dataset"] == "digits"
    rows = {r["variant"]: r for r in out["rows"]}
    assert len(rows) == 7 and rows["everything"]["observation"][-3:] == ["margin", "iterated", "residuals"]
    assert "activations" not in rows["without activations"]["observation"]
    for r in rows.values():
        assert 0 <= r["accuracy"] <= 1 and r["compute_fraction"] > 0 and r["demonstrations"] >= 200


@slow
def test_iteration_body_quick():
    out = _run("iteration_body")
    assert out["benchmark"] == "iteration_body" and [r["rows"] for r in out["rows"]] == [8, 85]
    for r in out["rows"]:
        assert r["eager_us"] > 0
        if out["compile_error"] is None:  # a machine without a C++ compiler reports why instead
            assert r["compiled_vs_eager"] == pytest.approx(r["compiled_us"] / r["eager_us"])
        else:
            assert r["compiled_us"] is None


@slow
def test_distributed_quick():
    out = _run("distributed")
    assert out["benchmark"] == "distributed" and [r["ranks"] for r in out["rows"]] == [1, 2]
    for r in out["rows"]:
        assert r["train_sps"] > 0 and r["cotrain_updates"] > 0 and r["replicas_equal"] is True
        assert r["timesteps"] >= 2048 and 0 <= r["accuracy"] <= 1


@slow
def test_inference_time_quick(tmp_path):
    from agents import train

    train.main(
        [
            "--dataset",
            "digits",
            "--total-timesteps",
            "256",
            "--num-envs",
            "8",
            "--pretrain-epochs",
            "1",
            "--imitation-samples",
            "64",
            "--n-steps",
            "16",
            "--batch-size",
            "64",
            *quiet_run_flags(tmp_path, "r"),
        ]
    )
    out = script_json("benchmarks/inference_time.py", tmp_path / "r", "--quick", "--json")
    assert out["benchmark"] == "inference_time" and out["batch"] == 256 and out["single_samples"] == 20
    names = list(out["rows"])
    assert names[:2] == ["agent", "fpi_all"] and names[2].startswith("fixed ") and names[3].startswith("confidence tau")
    for row in out["rows"].values():
        assert row["batched_seconds"] > 0 and row["single_seconds"] > 0 and 0 < row["compute_fraction"]
        assert row["batched_time_vs_fpi_all"] == pytest.approx(row["batched_seconds"] / out["rows"]["fpi_all"]["batched_seconds"])
    assert out["rows"]["fpi_all"]["compute_fraction"] == pytest.approx(1.0)
    assert set(out["targets"]) == {"batched_agent_at_most_half_of_fpi_all", "batched_agent_below_cheapest_fixed_path"}


@slow
def test_agent_vs_rule_quick(tmp_path, monkeypatch):
    argv = [
        "--quick",
        "--json",
        "--out-dir",
        tmp_path,
        *"--seeds 0 --lambda-seeds 0 --digits-seeds 0 --lams 0.01 0.1 1 --dataset digits".split(),
    ]
    out = script_json("benchmarks/agent_vs_rule.py", *argv, timeout=900)
    (grid,), (lam,), (digits,) = out["grid_lookup"], out["lambda_agent"], out["digits"]
    assert 0 <= grid["agent_accuracy"] <= 1 and grid["ceiling_compute"] > 0 and grid["fpi_all_accuracy"] > 0
    if grid["gap_closed"] is not None:
        rule, agent, ceiling = grid["rule_compute_at_fpi_all_accuracy"], grid["agent_compute"], grid["ceiling_compute"]
        assert grid["gap_closed"] == pytest.approx((rule - agent) / (rule - ceiling))
    assert [p["lam"] for p in lam["points"]] == [0.01, 0.1, 1.0] and lam["confidence_curve"]
    assert lam["on_or_above_the_rule"] == (not lam["rule_points_above_the_agent"])
    assert {"within_half_a_point_of_the_best_fixed_path", "compute_at_most_0.3"} <= set(digits)
    assert digits["run"] == grid["run"]  # with --dataset digits the digits seed is the grid seed's run, trained once
    assert Path(out["figures"][0]).is_file()
    # a second call finds every run and comparison in place and only aggregates: it runs in this process,
    # through the script's main, where starting any training or evaluation fails
    agent_vs_rule = load_script("benchmarks/agent_vs_rule.py")

    def nothing_to_run(script, *args, out=None):
        raise AssertionError(f"the second call ran {script} {' '.join(args)}")

    monkeypatch.setattr(agent_vs_rule, "_python", nothing_to_run)
    again = agent_vs_rule.main([str(a) for a in argv])
    assert json.loads(json.dumps(again))["grid_lookup"] == out["grid_lookup"]


@slow
def test_time_to_env_times_each_training_gradient_and_compares_their_accuracy():
    out = script_json(
        "benchmarks/time_to_env.py",
        "--quick",
        "--skip-make",
        "--images",
        "100",
        "--grads",
        "implicit",
        "phantom",
        "--accuracy-seeds",
        "1",
        "--json",
    )
    assert [row["grad"] for row in out["cnn_warmup"]] == ["implicit", "phantom"] and "gym_make" not in out
    for row in out["cnn_warmup"]:
        assert row["train_samples"] == 80 and row["model"] == "cnn" and row["cpu_seconds_per_epoch"] > 0
        assert set(row["test_accuracy"]) == {"plain", "L1", "L2", "L3", "FPI on every layer"}
    implicit, phantom = out["cnn_warmup"]
    assert implicit["losses"] != phantom["losses"]  # the two gradients train different models from one seed
    for grad in ("implicit", "phantom"):
        accuracy = out["cnn_grad_accuracy"][grad]
        assert accuracy["fpi_all_accuracy"]["n"] == 1
        assert accuracy["fpi_all_accuracy"]["mean"] == accuracy["per_seed"][0]["FPI on every layer"]
