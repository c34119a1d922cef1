"""Each benchmark script runs with --quick and prints JSON with its documented keys.

Marked slow: deselect with ``-m "not slow"``. The tests check structure, never timings."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _run(name: str) -> dict:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), "--quick", "--json"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_env_throughput_quick():
    out = _run("env_throughput")
    assert out["benchmark"] == "env_throughput" and out["cotrain"] is False
    assert [r["num_envs"] for r in out["rows"] if r["device"] == "cpu"] == [1, 64]
    for row in out["rows"]:
        assert {"device", "num_envs", "batched_sps", "sync_sps", "speedup"} <= set(row)
        assert row["batched_sps"] > 0 and row["sync_sps"] > 0
        assert row["speedup"] == pytest.approx(row["batched_sps"] / row["sync_sps"])


def test_backward_quick():
    out = _run("backward")
    assert out["benchmark"] == "backward"
    modes = {(r["mode"], r["forward_iterations"]) for r in out["rows"]}
    assert modes == {(m, k) for m in ("unrolled", "implicit", "implicit-tol1e-5", "phantom") for k in (10, 30)}
    for row in out["rows"]:
        assert {"seconds", "backward_seconds", "memory_bytes", "memory_kind", "time_vs_unrolled", "backward_time_vs_unrolled", "memory_vs_unrolled", "cosine_to_unrolled"} <= set(row)
        if row["mode"].startswith("implicit"):
            # the implicit gradient is the unrolled one, up to the solvers' tolerances
            assert row["cosine_to_unrolled"] > 0.999 and row["adjoint_iterations"] >= 1
        if row["mode"] == "unrolled":
            assert row["memory_vs_unrolled"] == 1.0
    cotrain = {r["mode"]: r for r in out["cotrain"]}
    assert set(cotrain) == {"unrolled", "implicit", "implicit-tol1e-5", "phantom"}
    assert cotrain["unrolled"]["cosine_to_unrolled"] == pytest.approx(1.0)
    assert cotrain["implicit"]["cosine_to_unrolled"] > 0.999  # where implicit is the layer's default


def test_solver_quick():
    out = _run("solver")
    assert out["benchmark"] == "solver"
    rows = out["rows"]
    assert {(r["model"], r["solver"], r["tol"]) for r in rows} == {
        (m, s, t) for m in ("mlp", "lstm") for s in ("picard", "anderson-m3", "anderson-m5") for t in (1e-2, 1e-3, 1e-4, 1e-5)}
    for r in rows:
        assert {"evaluations_per_solve", "max_evaluations", "converged_fraction", "seconds", "accuracy", "compute"} <= set(r)
        assert 1 <= r["evaluations_per_solve"] <= r["max_evaluations"] <= r["max_iter"]
        assert 0 <= r["converged_fraction"] <= 1 and 0 <= r["accuracy"] <= 1 and r["compute"] > 1
    picard = {(r["model"], r["tol"]): r for r in rows if r["solver"] == "picard"}
    for r in rows:  # every solver reads the same weights; a tighter tol never costs fewer evaluations
        looser = picard.get((r["model"], r["tol"] * 10))
        if r["solver"] == "picard" and looser is not None:
            assert r["evaluations_per_solve"] >= looser["evaluations_per_solve"]


def test_warmup_paths_quick():
    out = _run("warmup_paths")
    assert out["epochs"] == 2 and [r["stop_prob"] for r in out["rows"]] == [0.0, 1.0]
    for row in out["rows"]:
        for path in ("plain", "fpi_L1", "fpi_L1_L2", "fpi_all"):
            assert 0 <= row[f"{path}_accuracy"] <= 1
        assert row["plain_compute"] == pytest.approx(1.0)
        assert row["fpi_all_compute"] > row["fpi_L1_compute"] > 1.0


def test_adaptive_vs_fixed_quick(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "adaptive_vs_fixed.py"), "--quick", "--json", "--out-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["benchmark"] == "adaptive_vs_fixed" and (tmp_path / "pareto.png").stat().st_size > 0
    table = out["summary"]["digits-graded"]
    for name in ("model0", "model1", "model2", "model3"):
        assert {"accuracy", "compute_fraction", "compute"} <= set(table[name])
    assert table["model3"]["compute_fraction"]["mean"] == pytest.approx(1.0)
    assert table["model0"]["compute_fraction"]["mean"] < table["model1"]["compute_fraction"]["mean"] < 1.0
    for algo in ("ppo", "reinforce"):
        agent = table[f"agent_{algo}"]
        assert {"accuracy", "compute_fraction", "time_ratio", "gap_to_model3", "oracle_accuracy", "gap_to_oracle",
                "level_compute", "hard_over_easy_compute", "target"} <= set(agent)
        assert sorted(agent["level_compute"], key=int) == ["0", "1", "2", "3", "4"]
        assert agent["gap_to_oracle"]["mean"] == pytest.approx(agent["accuracy"]["mean"] - agent["oracle_accuracy"]["mean"])
        assert 0 <= agent["oracle_accuracy"]["mean"] <= 1 and agent["compute_fraction"]["mean"] > 0
        assert set(agent["target"]) == {"accuracy_within_0.5_points_of_model3", "compute_at_most_0.4", "wall_time_at_most_0.5",
                                        "more_compute_on_harder_levels", "all"}
    assert [p["lam"] for p in table["lambda_agent"]] == [0.0, 0.01]

    # the saved runs reproduce the recorded accuracy and compute (checked by --retime) and get new wall times
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "adaptive_vs_fixed.py"), "--merge", str(tmp_path / "adaptive_vs_fixed.json"),
         "--retime", "--timing-repeats", "2", "--json", "--out-dir", str(tmp_path / "retimed")], capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    retimed = json.loads(proc.stdout.strip().splitlines()[-1])
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
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "adaptive_vs_fixed.py"), "--merge", str(tmp_path / "adaptive_vs_fixed.json"),
         str(second), "--json", "--out-dir", str(merged_dir)], capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    merged = json.loads(proc.stdout.strip().splitlines()[-1])["summary"]["digits-graded"]
    acc0 = merged["model0"]["accuracy"]
    assert acc0["n"] == 2 and acc0["mean"] == pytest.approx(entry["baselines"]["model0"]["accuracy"] + 0.05)
    assert acc0["std"] == pytest.approx(0.1 / 2**0.5)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "adaptive_vs_fixed.py"), "--merge", str(merged_dir / "adaptive_vs_fixed.json"),
         "--markdown", "--out-dir", str(tmp_path / "md")], capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "#### digits-graded (2 seeds)" in proc.stdout and f"| Model 0 (plain) | {acc0['mean']:.4f} ± {acc0['std']:.4f} |" in proc.stdout
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "adaptive_vs_fixed.py"), "--merge", str(second), str(second), "--out-dir", str(merged_dir)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode != 0 and "seed 1 appears in both" in proc.stderr


def test_introspection_quick(tmp_path):
    """The introspection benchmark end to end at smoke size: the agent beside every baseline, the lambda
    sweep against the fixed-lambda agents, the figures, and a merge of two seeds."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "introspection.py"), "--quick", "--tasks", "digits", "--seeds", "0", "--json",
         "--out-dir", str(tmp_path)], capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
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
    # a second seed from another process merges into mean +- std; the same seed twice is refused
    other = json.loads(json.dumps(entry))
    other["seed"] = 1
    other["comparison"]["agent"]["accuracy"] += 0.1
    second = tmp_path / "second.json"
    second.write_text(json.dumps({"benchmark": "introspection", "per_seed": [other]}))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "introspection.py"), "--merge", str(tmp_path / "introspection.json"), str(second),
         "--out-dir", str(tmp_path / "merged")], capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "#### digits (seeds 0, 1" in proc.stdout and "learnable ceiling" in proc.stdout
    merged = json.loads((tmp_path / "merged" / "introspection.json").read_text())["summary"]["digits"]["agent"]["accuracy"]
    assert merged["n"] == 2 and merged["std"] == pytest.approx(0.1 / 2**0.5)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "introspection.py"), "--merge", str(second), str(second), "--out-dir", str(tmp_path / "m2")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode != 0 and "appears twice" in proc.stderr


def test_observation_ablation_quick():
    out = _run("observation_ablation")
    assert out["benchmark"] == "observation_ablation" and out["dataset"] == "digits"
    rows = {r["variant"]: r for r in out["rows"]}
    assert len(rows) == 7 and rows["everything"]["observation"][-3:] == ["margin", "iterated", "residuals"]
    assert "activations" not in rows["without activations"]["observation"]
    for r in rows.values():
        assert 0 <= r["accuracy"] <= 1 and r["compute_fraction"] > 0 and r["demonstrations"] >= 200


def test_iteration_body_quick():
    out = _run("iteration_body")
    assert out["benchmark"] == "iteration_body" and [r["rows"] for r in out["rows"]] == [8, 85]
    for r in out["rows"]:
        assert r["eager_us"] > 0
        if out["compile_error"] is None:  # a machine without a C++ compiler reports why instead
            assert r["compiled_vs_eager"] == pytest.approx(r["compiled_us"] / r["eager_us"])
        else:
            assert r["compiled_us"] is None


def test_distributed_quick():
    out = _run("distributed")
    assert out["benchmark"] == "distributed" and [r["ranks"] for r in out["rows"]] == [1, 2]
    for r in out["rows"]:
        assert r["train_sps"] > 0 and r["cotrain_updates"] > 0 and r["replicas_equal"] is True
        assert r["timesteps"] >= 2048 and 0 <= r["accuracy"] <= 1


def test_inference_time_quick(tmp_path):
    from agents import train

    train.main(["--dataset", "digits", "--total-timesteps", "256", "--num-envs", "8", "--pretrain-epochs", "1", "--imitation-samples", "64",
                "--n-steps", "16", "--batch-size", "64", "--no-progress", "--device", "cpu", "--logdir", str(tmp_path), "--run-name", "r"])
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "inference_time.py"), str(tmp_path / "r"), "--quick", "--json"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["benchmark"] == "inference_time" and out["batch"] == 256 and out["single_samples"] == 20
    names = list(out["rows"])
    assert names[:2] == ["agent", "fpi_all"] and names[2].startswith("fixed ") and names[3].startswith("confidence tau")
    for row in out["rows"].values():
        assert row["batched_seconds"] > 0 and row["single_seconds"] > 0 and 0 < row["compute_fraction"]
        assert row["batched_time_vs_fpi_all"] == pytest.approx(row["batched_seconds"] / out["rows"]["fpi_all"]["batched_seconds"])
    assert out["rows"]["fpi_all"]["compute_fraction"] == pytest.approx(1.0)
    assert set(out["targets"]) == {"batched_agent_at_most_half_of_fpi_all", "batched_agent_below_cheapest_fixed_path"}


def test_agent_vs_rule_quick(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "agent_vs_rule.py"), "--quick", "--json", "--out-dir", str(tmp_path),
                           "--seeds", "0", "--lambda-seeds", "0", "--digits-seeds", "0", "--lams", "0.01", "0.1", "1",
                           "--dataset", "digits"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    (grid,), (lam,), (digits,) = out["grid_lookup"], out["lambda_agent"], out["digits"]
    assert 0 <= grid["agent_accuracy"] <= 1 and grid["ceiling_compute"] > 0 and grid["fpi_all_accuracy"] > 0
    if grid["gap_closed"] is not None:
        rule, agent, ceiling = grid["rule_compute_at_fpi_all_accuracy"], grid["agent_compute"], grid["ceiling_compute"]
        assert grid["gap_closed"] == pytest.approx((rule - agent) / (rule - ceiling))
    assert [p["lam"] for p in lam["points"]] == [0.01, 0.1, 1.0] and lam["confidence_curve"]
    assert lam["on_or_above_the_rule"] == (not lam["rule_points_above_the_agent"])
    assert {"within_half_a_point_of_the_best_fixed_path", "compute_at_most_0.3"} <= set(digits)
    assert Path(out["figures"][0]).is_file()
    # a second call finds every run and comparison in place and only aggregates
    again = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "agent_vs_rule.py"), "--quick", "--json", "--out-dir", str(tmp_path),
                            "--seeds", "0", "--lambda-seeds", "0", "--digits-seeds", "0", "--lams", "0.01", "0.1", "1",
                            "--dataset", "digits"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and json.loads(again.stdout.strip().splitlines()[-1])["grid_lookup"] == out["grid_lookup"]
