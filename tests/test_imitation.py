"""The imitation warm-start and refresh, the rules charged fairly, and the short comparison every
training run prints."""

from __future__ import annotations

import json

import pytest
import torch
from test_agents import TINY_AGENT, TINY_RUN, _scalars

from agents import train
from agents.algorithms import ALGORITHMS, make_agent
from agents.compare import CONFIDENCE_RULE_OBSERVATION, simple_baselines, simple_baselines_table
from agents.imitation import demonstrations, fit_to_actions, imitation_warm_start
from dynalay_env import build_engine, evaluate_policy, oracle_paths
from dynalay_env.baselines import rule_orders, sweep


@pytest.fixture(scope="module")
def warm():
    """A digits main model warmed up briefly, with the plain path trained alongside."""
    return build_engine(8, dataset="digits", pretrain_epochs=2, progress=False, seed=0, train_alternatives=("plain",), cotrain=False)


@pytest.mark.parametrize("algo", ["ppo", "a2c", "dqn", "reinforce"])
def test_imitation_fits_every_agents_policy_to_the_oracle(warm, algo):
    settings = ALGORITHMS[algo]()
    agent = make_agent(algo, settings, warm, reward_weight=0.2, seed=0, device=torch.device("cpu"), total_timesteps=64)
    demos = demonstrations(
        warm.model,
        warm.splits.x_train[:300],
        warm.splits.y_train[:300],
        max_steps=warm.max_steps,
        observation=warm.layout.groups,
        reward=warm.reward,
    )
    policy = agent.policy()
    before = float((policy(demos.obs) == demos.actions).float().mean())
    done = imitation_warm_start(warm, agent, samples=300, epochs=20, seed=0)
    after = float((policy(demos.obs) == demos.actions).float().mean())
    assert done.samples == 300 and done.demonstrations == demos.obs.shape[0] and done.seconds > 0
    # the greedy policy now follows the oracle (the demonstrations are those the warm start fitted)
    assert after == pytest.approx(done.agreement, abs=1e-6) and after > max(before, 0.8)
    if algo == "dqn":  # the target network starts where the fitted Q-network is
        q = agent.model.policy
        for a, b in zip(q.q_net.parameters(), q.q_net_target.parameters()):
            assert torch.equal(a, b)


def test_the_margin_loss_ranks_the_demonstrated_action_first():
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    obs = torch.randn(64, 4)
    actions = (obs[:, 0] > 0).long() * 2
    assert fit_to_actions(net, net.parameters(), obs, actions, epochs=200, lr=0.05, loss="margin") == 1.0
    with pytest.raises(ValueError, match="loss must be"):
        fit_to_actions(net, net.parameters(), obs, actions, loss="hinge")


def test_the_demonstrations_search_at_most_max_depth_steps(warm):
    x, y = warm.splits.x_train[:200], warm.splits.y_train[:200]
    one = oracle_paths(warm.model, x, y, max_steps=warm.max_steps, min_confidence=0.99, max_depth=1)
    full = oracle_paths(warm.model, x, y, max_steps=warm.max_steps, min_confidence=0.99)
    assert ((one.paths > 0).sum(1) <= 1).all()
    # a narrower search finds no cheaper answer, and solves no sample the full one does not
    assert (one.cost[one.solved] >= full.cost[one.solved] - 1e-6).all() and not (one.solved & ~full.solved).any()


def test_the_confidence_rule_pays_for_nothing_it_does_not_read(warm):
    """The rule reads confidence and progress only: at tau 0 it answers at once, for exactly the
    plain path's compute (an observation with the residuals' probe would charge it more)."""
    model, splits = warm.model, warm.splits
    plain = evaluate_policy(model, splits, [], max_steps=warm.max_steps)
    points = sweep("confidence", model, splits, taus=[0.0], max_steps=warm.max_steps, observation=CONFIDENCE_RULE_OBSERVATION)
    assert points[0]["compute_fraction"] == pytest.approx(plain.compute_fraction, rel=1e-6)
    assert points[0]["order"] == [1, 2, 3]
    assert rule_orders(3, [2, 3]) == [[1, 2, 3], [2, 3, 1]] and rule_orders(3, [1, 2, 3]) == [[1, 2, 3]]


def test_a_report_of_fpi_on_every_layer_is_reused_not_recomputed(warm):
    model, splits = warm.model, warm.splits
    ref = evaluate_policy(model, splits, [1, 2, 3], max_steps=warm.max_steps)
    alone = evaluate_policy(model, splits, [2], max_steps=warm.max_steps)
    shared = evaluate_policy(model, splits, [2], max_steps=warm.max_steps, reference=ref)
    assert (shared.accuracy, shared.compute_fraction, shared.fpi_all_accuracy) == (
        alone.accuracy,
        alone.compute_fraction,
        alone.fpi_all_accuracy,
    )
    assert shared.seconds != shared.seconds  # NaN: nothing was timed


def test_the_short_comparison_names_the_cheapest_fixed_path_and_rule_as_accurate(warm):
    reward = warm.reward.fixed(warm.reward.lam)
    agent = evaluate_policy(warm.model, warm.splits, [], max_steps=warm.max_steps)
    result = simple_baselines(warm.model, warm.splits, agent, reward=reward, max_steps=warm.max_steps)
    goal = agent.accuracy - result["tolerance"]
    fixed, rule = result["cheapest_fixed_path"], result["confidence_rule"]
    assert fixed["accuracy"] >= goal and rule["accuracy"] >= goal
    assert fixed["path"] == "NOP" or fixed["compute_fraction"] <= result["plain"]["compute_fraction"]
    assert all(p["compute_fraction"] >= rule["compute_fraction"] for p in result["confidence_curve"] if p["accuracy"] >= goal)
    table = simple_baselines_table(result, "ppo agent")
    assert (
        "ppo agent" in table
        and f"cheapest fixed path as accurate: {fixed['path']}" in table
        and "confidence rule as accurate: tau" in table
    )


def test_a_run_warm_starts_refreshes_and_prints_its_comparison(tmp_path, capsys):
    argv = (
        TINY_RUN
        + ["--algo", "ppo"]
        + TINY_AGENT["ppo"]
        + ["--logdir", str(tmp_path), "--run-name", "im", "--imitation-every", "256", "--total-timesteps", "1024"]
    )
    result = train.main(argv)
    out = capsys.readouterr().out
    assert "imitation warm-start: the oracle's sequences for 64 train samples" in out
    assert "cheapest fixed path as accurate" in out and "confidence rule as accurate" in out
    saved = json.loads((tmp_path / "im" / "eval.json").read_text())
    assert saved["imitation"]["samples"] == 64 and 0 <= saved["imitation"]["agreement"] <= 1
    assert saved["baselines"]["agent"]["accuracy"] == pytest.approx(result["accuracy"])
    assert saved["train_time_breakdown_seconds"]["imitation_refresh"] > 0
    assert "charts/imitation_agreement" in _scalars(tmp_path / "im")
    # without imitation, RL starts from a random policy
    off = train.main(
        TINY_RUN
        + ["--algo", "reinforce"]
        + TINY_AGENT["reinforce"]
        + ["--logdir", str(tmp_path), "--run-name", "off", "--imitation-samples", "0"]
    )
    assert off["imitation"] is None and "charts/imitation_agreement" not in _scalars(tmp_path / "off")
    with pytest.raises(SystemExit, match="--imitation-samples and --imitation-every must be >= 0"):
        train.main(TINY_RUN + ["--imitation-samples", "-1", "--logdir", str(tmp_path), "--run-name", "bad"])


def test_demonstrations_answer_at_once_where_lambda_makes_the_sequence_dearer_than_the_answer(warm):
    from dynalay_env import RewardConfig

    x, y = warm.splits.x_train[:200], warm.splits.y_train[:200]
    free = demonstrations(warm.model, x, y, max_steps=warm.max_steps, observation=warm.layout.groups, reward=RewardConfig(lam=0.0))
    dear = demonstrations(warm.model, x, y, max_steps=warm.max_steps, observation=warm.layout.groups, reward=RewardConfig(lam=100.0))
    assert (free.actions > 0).any() and (dear.actions == 0).all() and dear.obs.shape[0] == 200  # one NOP per episode
    # across a lambda range, the cheap end iterates and the dear end does not
    mixed = demonstrations(
        warm.model, x, y, max_steps=warm.max_steps, observation=warm.layout.groups, reward=RewardConfig(lam_range=(0.0, 100.0))
    )
    assert 0 < int((mixed.actions > 0).sum()) < int((free.actions > 0).sum())


def test_the_one_rollout_confidence_sweep_is_the_rule_run_tau_by_tau(warm):
    from dynalay_env.baselines import confidence_threshold
    from dynalay_env.engine import ObservationLayout

    model, splits, T = warm.model, warm.splits, warm.max_steps
    taus = [0.0, 0.5, 0.8, 0.95, 1.0]
    ref = evaluate_policy(model, splits, [1, 2, 3], max_steps=T)
    for order in ([1, 2, 3], [2, 3, 1]):
        swept = sweep(
            "confidence", model, splits, taus=taus, max_steps=T, observation=CONFIDENCE_RULE_OBSERVATION, reference=ref, order=order
        )
        layout = ObservationLayout(model.num_layers, model.summary_dim, CONFIDENCE_RULE_OBSERVATION)
        for tau, point in zip(taus, swept):
            run = evaluate_policy(
                model,
                splits,
                confidence_threshold(layout, T, tau, order),
                max_steps=T,
                observation=CONFIDENCE_RULE_OBSERVATION,
                reference=ref,
            )
            assert point["accuracy"] == pytest.approx(run.accuracy, abs=1.5 / len(splits.y_test))
            assert point["compute_fraction"] == pytest.approx(run.compute_fraction, rel=1e-4)
            assert point["order"] == order and point["tau"] == tau
