"""The training workflow: four algorithms behind one entry point, TensorBoard, checkpoints,
resume after a kill, configuration files and evaluation."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import quiet_run_flags, refusal, tiny_run_argv
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from agents import evaluate, train
from agents.algorithms import ALGORITHMS
from agents.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from agents.reinforce import EpisodeBuffer
from agents.settings import resolve

ROOT = Path(__file__).resolve().parent.parent
TINY_RUN = tiny_run_argv(total_timesteps=512, checkpoint_freq=256)
TINY_AGENT = {
    "ppo": ["--n-steps", "64", "--batch-size", "64"],
    "a2c": ["--n-steps", "4"],
    "dqn": ["--batch-size", "64", "--learning-starts", "64"],
    "reinforce": ["--n-steps", "4"],
}


def tiny(algo: str) -> list[str]:
    """A run small enough for a test that still updates its agent."""
    return TINY_RUN + ["--algo", algo] + TINY_AGENT[algo]


def _scalars(run_dir: Path) -> set[str]:
    tags = set()
    for events in [run_dir, run_dir / "eval"]:
        if events.is_dir():
            acc = EventAccumulator(str(events))
            acc.Reload()
            tags |= set(acc.Tags()["scalars"])
    return tags


@pytest.mark.parametrize("algo", ["ppo", "a2c", "dqn", "reinforce"])
def test_each_algorithm_trains_logs_and_checkpoints(algo, tmp_path):
    result = train.main(tiny(algo) + ["--logdir", str(tmp_path), "--run-name", algo, "--lam-range", "0,0.05"])
    run = tmp_path / algo
    assert result["algo"] == algo and result["timesteps"] >= 512
    config = json.loads((run / "config.json").read_text())
    assert config["algo"] == algo and config["env"]["lam_range"] == [0.0, 0.05]
    ckpt = load_checkpoint(run)
    assert ckpt["algo"] == algo and ckpt["timesteps"] == result["timesteps"]
    assert "model" in ckpt["engine"] and ckpt["engine"]["trainer"]["optimizer"] is not None
    evaluation = json.loads((run / "eval.json").read_text())
    assert 0 <= evaluation["accuracy"] <= 1 and evaluation["compute_fraction"] > 0
    # where the training time went: every phase accounted for, adding up to the training time
    breakdown = evaluation["train_time_breakdown_seconds"]
    assert set(breakdown) == {
        "fpi_solves",
        "observations",
        "episode_resets",
        "env_bookkeeping",
        "cotrain_updates",
        "logging_eval_checkpoints",
        "imitation_refresh",
        "agent",
    }
    assert all(v >= 0 for v in breakdown.values()) and breakdown["fpi_solves"] > 0 and breakdown["cotrain_updates"] > 0
    assert sum(breakdown.values()) == pytest.approx(evaluation["train_seconds"], rel=0.05)
    assert evaluation["train_sps"] == pytest.approx(evaluation["timesteps"] / evaluation["train_seconds"], rel=1e-6)
    tags = _scalars(run)
    expected = {
        "charts/episode_reward",
        "charts/train_accuracy",
        "charts/compute",
        "charts/action_freq/NOP",
        "paths/accuracy/NOP",
        "paths/accuracy/L1,L2,L3",
        "losses/main_model_ce",
        "eval/accuracy",
        "eval/compute_fraction",
        "charts/SPS",
    }
    assert expected <= tags, expected - tags
    if algo == "ppo":  # SB3's own tags land in the same run directory
        assert "rollout/ep_rew_mean" in tags
    if algo == "reinforce":
        assert {"losses/policy_loss", "losses/value_loss", "losses/entropy"} <= tags


def test_fixed_paths_and_the_decisions_figure_are_logged_every_detail_every_steps_and_at_the_end(tmp_path):
    train.main(tiny("reinforce") + ["--logdir", str(tmp_path), "--run-name", "fig", "--detail-every", "256"])
    acc = EventAccumulator(str(tmp_path / "fig"), size_guidance={"images": 0})
    acc.Reload()
    steps = [event.step for event in acc.Images("charts/decisions")]
    # charts every 128 steps; the details once 256 have passed since the last, and at the end
    assert len(steps) >= 2 and steps[-1] >= 512
    assert all(b - a >= 256 for a, b in zip(steps[:-2], steps[1:-1]))
    assert len(steps) < len(acc.Scalars("charts/episode_reward"))
    assert [e.step for e in acc.Scalars("paths/accuracy/NOP")] == steps  # fixed paths evaluated with the figure


@pytest.mark.parametrize("algo", ["ppo", "a2c", "dqn", "reinforce"])
def test_thin_entry_points_run_their_algorithm(algo, monkeypatch):
    import runpy

    calls = []
    monkeypatch.setattr(train, "main", lambda argv=None, forced=None: calls.append(forced))
    runpy.run_path(str(ROOT / "agents" / f"train_{algo}.py"), run_name="__main__")
    assert calls == [{"algo": algo}]
    settings = resolve([], ALGORITHMS, forced={"algo": algo})
    assert settings.run.algo == algo and type(settings.agent).__name__.lower().startswith(algo[:3])
    other = "ppo" if algo != "ppo" else "dqn"
    with pytest.raises(SystemExit, match=f"this script trains {algo}; for --algo {other} use agents/train.py"):
        resolve(["--algo", other], ALGORITHMS, forced={"algo": algo})


def test_yaml_config_is_overridden_by_explicit_flags(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("algo: dqn\nlam: 0.3\nnum-envs: 4\nexploration_fraction: 0.5\n")
    settings = resolve(["--config", str(cfg), "--lam", "0.1"], ALGORITHMS)
    assert settings.run.algo == "dqn" and settings.run.num_envs == 4 and settings.agent.exploration_fraction == 0.5
    assert settings.env.lam == 0.1
    bad = tmp_path / "bad.yaml"
    bad.write_text("lamda: 0.3\n")
    with pytest.raises(SystemExit, match="unknown key 'lamda'"):
        resolve(["--config", str(bad)], ALGORITHMS)
    broken = tmp_path / "broken.yaml"
    broken.write_text("lam: [0.3\n")
    with pytest.raises(SystemExit, match="not valid YAML"):
        resolve(["--config", str(broken)], ALGORITHMS)


def test_bad_flags_are_refused_before_anything_is_written(tmp_path, capsys):
    script = str(ROOT / "agents" / "train.py")
    cases = [
        (["--algo", "sarsa"], "invalid choice: 'sarsa'"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (["--lam", "-1"], "lam must be >= 0"),
        (["--lam-range", "abc"], "--lam-range must be 'low,high'"),
        (["--dataset", "nope"], "unknown dataset 'nope'"),
    ]
    # from a shell once: the exit status and the message on stderr
    (argv, message), *in_process = cases
    proc = subprocess.run([sys.executable, script, *argv, "--logdir", str(tmp_path), "--run-name", "x"], capture_output=True, text=True)
    assert proc.returncode != 0 and message in proc.stderr, (argv, proc.stderr[-500:])
    # the rest through the same main(), without a new interpreter's seconds of imports each
    for argv, message in in_process:
        assert message in refusal(train.main, [*argv, "--logdir", str(tmp_path), "--run-name", "x"], capsys), argv
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_killed_run_resumes_from_its_checkpoint(tmp_path, capsys):
    script = str(ROOT / "agents" / "train.py")
    # the default task; a small imitation warm-start (the default's 2000 oracle searches cost half a minute,
    # and nothing here depends on them)
    argv = [
        sys.executable,
        script,
        "--algo",
        "ppo",
        "--total-timesteps",
        "3072",
        "--num-envs",
        "8",
        "--n-steps",
        "32",
        "--batch-size",
        "64",
        "--pretrain-epochs",
        "0",
        "--imitation-samples",
        "64",
        "--imitation-epochs",
        "2",
        "--checkpoint-freq",
        "512",
        *quiet_run_flags(tmp_path, "killed"),
    ]
    run = tmp_path / "killed"
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (run / "checkpoint.pt").exists() and load_checkpoint(run)["timesteps"] >= 512:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "training ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    at_kill = load_checkpoint(run)
    killed_at = at_kill["timesteps"]
    load_checkpoint_updates = at_kill["engine"]["trainer"]["updates"]
    assert 512 <= killed_at < 3072
    assert not (run / "eval.json").exists()

    # resumed in this process: what is tested is the checkpoint a killed process left, not a second start-up
    capsys.readouterr()
    train.main(["--resume", str(run), "--no-progress", "--device", "cpu"])
    assert f"resumed ppo run {run} at step {killed_at} of 3072" in capsys.readouterr().out
    final = load_checkpoint(run)
    assert final["timesteps"] >= 3072
    assert json.loads((run / "eval.json").read_text())["timesteps"] == final["timesteps"]
    # the co-trained main model continued from the checkpoint's state rather than starting over
    assert final["engine"]["trainer"]["updates"] > load_checkpoint_updates


def test_corrupt_or_mismatched_checkpoints_are_refused(tmp_path):
    train.main(tiny("reinforce") + ["--total-timesteps", "64", "--logdir", str(tmp_path), "--run-name", "r"])
    run = tmp_path / "r"
    good = load_checkpoint(run)
    # a different step budget does not fit the saved engine
    config = json.loads((run / "config.json").read_text())
    config["env"]["max_steps"] = 3
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit, match="cannot resume: checkpoint is for 3 layers / budget 6"):
        train.main(["--resume", str(run), "--no-progress", "--device", "cpu"])
    # a truncated file
    (run / "checkpoint.pt").write_bytes((run / "checkpoint.pt").read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(run)
    with pytest.raises(SystemExit, match="cannot resume: checkpoint .* is corrupt"):
        train.main(["--resume", str(run), "--no-progress"])
    # a main model with other shapes
    good["engine"]["model"] = {k: v[..., :1] if v.dim() else v for k, v in good["engine"]["model"].items()}
    save_checkpoint(run, {k: v for k, v in good.items() if k != "format"})
    config["env"]["max_steps"] = None
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit, match="does not match the main model"):
        train.main(["--resume", str(run), "--no-progress", "--device", "cpu"])
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path)


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, {"algo": "ppo", "timesteps": 1, "agent": {}, "engine": {}, "config": {}})
    before = (tmp_path / "checkpoint.pt").read_bytes()

    def explode(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", explode)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, {"algo": "ppo", "timesteps": 2, "agent": {}, "engine": {}, "config": {}})
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    assert list(tmp_path.glob(".checkpoint-*")) == []


def test_evaluate_reports_tradeoff_and_writes_figures(tmp_path, capsys):
    train.main(tiny("reinforce") + ["--logdir", str(tmp_path), "--run-name", "e", "--lam-range", "0,0.05"])
    run = tmp_path / "e"
    capsys.readouterr()
    out = evaluate.main([str(run), "--lam", "0", "0.01", "0.05", "--json", "--device", "cpu"])
    printed = json.loads(capsys.readouterr().out)
    assert printed["algo"] == "reinforce" and len(printed["results"]) == 3
    for r in out["results"]:
        assert {"accuracy", "compute_fraction", "action_frequency", "mean_episode_length", "per_difficulty"} <= set(r)
        assert abs(sum(r["action_frequency"]) - 1) < 1e-6
        assert abs(sum(r["sequences_per_level"][-1].values()) - 1) < 1e-6  # digits: one level, -1
        assert all(abs(sum(step.values()) - 1) < 1e-6 for step in r["actions_per_step"][-1])
    assert [r["lam"] for r in out["results"]] == [0.0, 0.01, 0.05]
    for name in (
        "layer_selection_lam0.png",
        "layer_selection_lam0.01.png",
        "layer_selection_lam0.05.png",
        "tradeoff_lam0-0.01-0.05.png",
        "decisions_lam0.05.png",
    ):
        assert (run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    events = run / "eval" / "lam0-0.01-0.05"
    acc = EventAccumulator(str(events))
    acc.Reload()
    assert {"eval/layer_selection/lam0.05", "eval/decisions/lam0.05", "eval/tradeoff"} <= set(acc.Tags()["images"])
    # evaluating again replaces the evaluation's events rather than adding a second file of the same points
    evaluate.main([str(run), "--lam", "0", "0.01", "0.05", "--json", "--device", "cpu"])
    assert len(list(events.glob("events.out.tfevents.*"))) == 1
    with pytest.raises(SystemExit, match="does not exist"):
        evaluate.main([str(tmp_path / "missing")])


def test_reinforce_buffer_emits_complete_episodes_with_returns():
    buf = EpisodeBuffer(2, 3, 1, 0.5, torch.device("cpu"))
    obs = lambda v: torch.tensor([[v], [v + 10.0]])  # noqa: E731
    o, a, g = buf.add(obs(0), torch.tensor([1, 2]), torch.tensor([1.0, 1.0]), torch.tensor([False, True]))
    assert o.tolist() == [[10.0]] and a.tolist() == [2] and g.tolist() == [1.0]
    o, a, g = buf.add(obs(1), torch.tensor([3, 0]), torch.tensor([2.0, 4.0]), torch.tensor([True, False]))
    # row 0: rewards 1, 2 -> returns 1 + 0.5 * 2 = 2 and 2
    assert o.tolist() == [[0.0], [1.0]] and a.tolist() == [1, 3] and g.tolist() == [2.0, 2.0]
    assert buf.length.tolist() == [0, 1]


@pytest.mark.parametrize("algo", ["ppo", "reinforce"])
def test_warmup_cache_continues_exactly_like_a_warm_up(algo, tmp_path):
    base = tiny(algo) + ["--logdir", str(tmp_path), "--checkpoint-freq", "0", "--lam", "0.005"]
    cache = tmp_path / "cache"
    plain = train.main(base + ["--run-name", "plain", "--warmup-cache", "off"])
    first = train.main(base + ["--run-name", "first", "--warmup-cache", str(cache)])
    (cached_file,) = cache.glob("*.pt")
    second = train.main(base + ["--run-name", "second", "--warmup-cache", str(cache)])
    for result in (first, second):
        assert result["accuracy"] == plain["accuracy"] and result["compute_fraction"] == plain["compute_fraction"]
        assert result["action_frequency"] == plain["action_frequency"]
    reference = load_checkpoint(tmp_path / "plain")["engine"]["model"]
    for run in ("first", "second"):
        model = load_checkpoint(tmp_path / run)["engine"]["model"]
        for name, tensor in reference.items():
            assert torch.equal(model[name], tensor), (run, name)

    # a warm-up that trains other paths alongside is a different warm-up: it gets its own entry
    train.main(base + ["--run-name", "alt", "--warmup-cache", str(cache), "--train-alternatives", "plain"])
    assert len(list(cache.glob("*.pt"))) == 2
    assert not torch.equal(load_checkpoint(tmp_path / "alt")["engine"]["model"][name], reference[name])

    cached_file.write_bytes(b"not a torch file")
    with pytest.raises(SystemExit, match="warm-up cache .* is corrupt"):
        train.main(base + ["--run-name", "third", "--warmup-cache", str(cache)])
