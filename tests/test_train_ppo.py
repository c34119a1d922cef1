"""The main job, agents/train_ppo.py, on a tiny budget: it trains, logs, saves and evaluates."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parent.parent


def test_train_ppo_writes_curves_models_and_evaluation(tmp_path):
    from agents import train_ppo

    result = train_ppo.main(
        [
            "--total-timesteps", "512", "--num-envs", "4", "--n-steps", "64", "--batch-size", "64",
            "--pretrain-epochs", "1", "--cotrain-every", "8", "--lam-range", "0,0.1",
            "--run-name", "tiny", "--logdir", str(tmp_path), "--no-progress", "--device", "cpu",
        ]
    )
    run = tmp_path / "tiny"
    for name in ("config.json", "agent.zip", "main_model.pt", "eval.json"):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["lam_range"] == "0,0.1" and config["algo"] == "ppo"
    evaluation = json.loads((run / "eval.json").read_text())
    assert evaluation["accuracy"] == pytest.approx(result["accuracy"])
    assert evaluation["action_frequency"] == pytest.approx(result["action_frequency"])
    assert 0.0 <= evaluation["accuracy"] <= 1.0
    assert 0.0 < evaluation["compute_fraction"] <= 1.5
    assert abs(sum(evaluation["action_frequency"]) - 1.0) < 1e-6

    events = EventAccumulator(str(run))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    expected = {
        "rollout/ep_rew_mean",
        "charts/train_accuracy",
        "charts/compute",
        "charts/action_freq/nop",
        "charts/action_freq/layer1",
        "charts/action_freq/layer3",
        "losses/main_model_ce",
        "eval/accuracy",
        "eval/compute_fraction",
    }
    assert expected <= tags, expected - tags

    import torch

    saved = torch.load(run / "main_model.pt", weights_only=False)
    assert any(k.startswith("layers.0.block") for k in saved["state_dict"])


def test_train_ppo_refuses_bad_flags(tmp_path):
    script = str(ROOT / "agents" / "train_ppo.py")
    bad_flag = subprocess.run([sys.executable, script, "--no-such-flag"], capture_output=True, text=True)
    assert bad_flag.returncode == 2 and "unrecognized arguments: --no-such-flag" in bad_flag.stderr
    bad_lam = subprocess.run(
        [sys.executable, script, "--lam", "-1", "--logdir", str(tmp_path), "--pretrain-epochs", "0"],
        capture_output=True, text=True,
    )
    assert bad_lam.returncode != 0 and "lam must be >= 0" in bad_lam.stderr
    bad_range = subprocess.run([sys.executable, script, "--lam-range", "abc", "--logdir", str(tmp_path)], capture_output=True, text=True)
    assert bad_range.returncode != 0 and "--lam-range must be 'low,high'" in bad_range.stderr
    bad_data = subprocess.run([sys.executable, script, "--dataset", "nope", "--logdir", str(tmp_path)], capture_output=True, text=True)
    assert bad_data.returncode != 0 and "unknown dataset 'nope'" in bad_data.stderr


def test_refused_run_leaves_no_run_directory(tmp_path):
    script = str(ROOT / "agents" / "train_ppo.py")
    proc = subprocess.run([sys.executable, script, "--lam", "-1", "--logdir", str(tmp_path), "--run-name", "x"], capture_output=True, text=True)
    assert proc.returncode != 0
    assert not (tmp_path / "x").exists()
