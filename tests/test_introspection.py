"""What a layer-selection policy can see and what it is measured against: the observation's feature
groups, the oracle's sequences, the exit-rule baselines and the learnable ceiling."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from agents.imitation import demonstrations, learnable_ceiling
from dynalay_env import (
    DEFAULT_OBSERVATION,
    OBSERVATION_GROUPS,
    EnvConfig,
    ObservationLayout,
    RewardConfig,
    build_engine,
    evaluate_policy,
    evaluation,
    make_engine,
    oracle_paths,
)
from dynalay_env.baselines import accuracy_at_compute, compute_at_accuracy, confidence_threshold, residual_threshold, sweep
from dynalay_env.evaluation import sequence_name, time_policies, time_policy
from main_models import DatasetSplits, MainModelTrainer, evaluate_fixed_path

ALL = tuple(OBSERVATION_GROUPS)


@pytest.fixture(scope="module")
def warm():
    """A digits main model warmed up briefly, with the plain path trained alongside."""
    return build_engine(1, dataset="digits", pretrain_epochs=2, progress=False, seed=0, train_alternatives=("plain",), cotrain=False)


def test_layout_places_each_group_and_refuses_unknown_ones():
    lay = ObservationLayout(3, 48, ALL)
    assert lay.size == 48 + 2 + 5 + 1 + 2 + 3 + 3
    assert (lay.lam, lay.lam_log, lay.step_fraction, lay.confidence, lay.margin, lay.entropy) == (48, 49, 50, 55, 56, 57)
    assert lay.iterated == slice(58, 61) and lay.residuals == slice(61, 64)
    assert ObservationLayout(3, 48, ("confidence", "activations")).groups == ("activations", "confidence")  # canonical order
    with pytest.raises(KeyError, match="no 'residuals' group"):
        ObservationLayout(3, 48, DEFAULT_OBSERVATION).residuals
    with pytest.raises(ValueError, match="observation groups must be"):
        ObservationLayout(3, 48, ("activations", "gossip"))


def test_margin_entropy_iterated_and_residuals_say_what_they_claim():
    engine = build_engine(2, dataset="digits", pretrain_epochs=0, cotrain=False, observation=ALL, lam=0.3)
    lay, net = engine.layout, engine.model
    obs = engine.reset()
    with torch.no_grad():
        probs = torch.softmax(net.readout(engine.state), dim=1)
    top = probs.topk(2, dim=1).values
    np.testing.assert_allclose(obs[:, lay.margin], (top[:, 0] - top[:, 1]), rtol=1e-5)
    assert ((obs[:, lay.entropy] >= 0) & (obs[:, lay.entropy] <= 1)).all()
    assert obs[:, lay.lam_log].tolist() == pytest.approx([float(np.log10(0.3 + 1e-4) / 4 + 1)] * 2, rel=1e-5)
    assert (obs[:, lay.iterated] == 0).all() and (obs[:, lay.residuals] > 0.01).all()  # the plain pass is no fixed point
    out = engine.step(torch.tensor([2, 0]))
    obs = out.obs
    # layer 2 sits at its fixed point, layer 3 was re-applied from a new input, layer 1 untouched
    assert obs[0, lay.iterated].tolist() == [0.0, 1.0, 0.0]
    assert obs[0, lay.residuals][1] < 5 * net.layers[1].tol
    # the probe is charged: one application of every layer on top of the step's own cost
    without = build_engine(2, dataset="digits", pretrain_epochs=0, cotrain=False, lam=0.3)
    without.reset()
    plain_cost = without.step(torch.tensor([2, 0])).step_cost[0]
    probe = net.residual_probe_flops / net.straightforward_flops
    assert float(out.step_cost[0]) == pytest.approx(float(plain_cost) + probe, rel=1e-4)
    assert float(engine.ep_compute[0]) == pytest.approx(1 + probe + float(out.step_cost[0]), rel=1e-4)


def test_oracle_paths_are_the_cheapest_that_answer_and_respect_min_confidence(warm):
    model, s = warm.model.eval(), warm.splits
    x, y = s.x_test[:24], s.y_test[:24]
    T = 2
    found = oracle_paths(model, x, y, max_steps=T)
    confident = oracle_paths(model, x, y, max_steps=T, min_confidence=0.99)
    full = float(model.straightforward_flops)
    sequences = [()] + [seq for k in (1, 2) for seq in itertools.product(range(1, 4), repeat=k)]
    with torch.no_grad():
        for i in range(24):
            best, best_conf = (float("inf"), None), (float("inf"), None)
            for seq in sequences:
                paths = torch.tensor([list(seq)], dtype=torch.long).reshape(1, len(seq))
                logits, steps = model.run_paths(x[i : i + 1], paths, per_step=True)
                cost = 1.0 + float(model.path_flops(paths, steps)) / full
                prob = torch.softmax(logits, 1)[0]
                if prob.argmax() == y[i] and cost < best[0]:
                    best = (cost, seq)
                if prob.argmax() == y[i] and prob[y[i]] >= 0.99 and cost < best_conf[0]:
                    best_conf = (cost, seq)
            for result, (cost, seq) in ((found, best), (confident, best_conf)):
                assert bool(result.solved[i]) == (seq is not None)
                if seq is not None:
                    assert float(result.cost[i]) == pytest.approx(cost, rel=1e-5)
                    assert sequence_name(result.paths[i].tolist()) == sequence_name(seq)
    both = confident.solved & found.solved  # asking for confidence never makes a solved sample cheaper
    assert (confident.cost[both] >= found.cost[both] - 1e-6).all()
    assert int(found.solved.sum()) >= int(confident.solved.sum())


@pytest.mark.parametrize("observation", [DEFAULT_OBSERVATION, ALL])
def test_a_fixed_path_is_charged_as_an_agent_that_follows_it(warm, observation):
    """Fixed paths are evaluated by the one fixed-path evaluator (no engine); an agent that takes
    the same steps in the engine gets the same report, compute to the bit (the residual probe of
    an observation that has it included), and a NOP in a path or a path past the budget ends it
    as the engine ends an episode."""
    model, splits, T = warm.model, warm.splits.head(None, 150), warm.max_steps
    lay = ObservationLayout(model.num_layers, model.summary_dim, observation)
    for path, taken in (([], []), ([2, 3], [2, 3]), ([1, 2, 3], [1, 2, 3]), ([3, 0, 1], [3]), ([1] * (T + 3), [1] * T)):
        fixed = torch.tensor(taken + [0] * (T + 1 - len(taken)))
        follow = lambda obs: fixed[torch.round(obs[:, lay.step_fraction] * T).long()]  # noqa: E731
        by_path = evaluate_policy(model, splits, path, max_steps=T, observation=observation).as_dict()
        by_agent = evaluate_policy(model, splits, follow, max_steps=T, observation=observation).as_dict()
        for report in (by_path, by_agent):
            report.pop("seconds"), report.pop("fpi_all_seconds")  # NaN: nothing timed
        assert by_path == by_agent, path
    probe = model.residual_probe_flops / model.straightforward_flops if "residuals" in observation else 0.0
    direct = evaluate_fixed_path(model, splits.x_test, splits.y_test, [2, 3], observation_cost=probe)
    assert float(direct["compute"].mean()) == evaluate_policy(model, splits, [2, 3], max_steps=T, observation=observation).compute
    with pytest.raises(ValueError, match=r"actions in \[0, 3\]"):
        evaluate_policy(model, splits, [4], max_steps=T)


def test_evaluation_times_nothing_and_timing_is_measured_apart(warm, monkeypatch):
    model, splits, T = warm.model, warm.splits.head(None, 100), warm.max_steps
    plain = lambda obs: torch.zeros(obs.shape[0], dtype=torch.long)  # noqa: E731
    rollouts = []
    real = evaluation._rollout
    monkeypatch.setattr(evaluation, "_rollout", lambda engine, policy: rollouts.append(policy) or real(engine, policy))
    report = evaluate_policy(model, splits, plain, max_steps=T)
    assert rollouts == [plain] and report.seconds != report.seconds and report.fpi_all_seconds != report.fpi_all_seconds
    rollouts.clear()
    was_training = model.training
    model.train()
    timing = time_policy(model, splits, plain, max_steps=T, repeats=3)
    # the policy and FPI on every layer, interleaved round by round; the model's mode is left as it was
    assert rollouts == [plain, [1, 2, 3]] * 3 and model.training
    assert timing.repeats == 3 and timing.seconds > 0 and timing.fpi_all_seconds > 0
    timed = report.timed(timing)
    assert (timed.seconds, timed.fpi_all_seconds, timed.accuracy) == (timing.seconds, timing.fpi_all_seconds, report.accuracy)
    rollouts.clear()
    times = time_policies(model, splits, {"a": (plain, DEFAULT_OBSERVATION), "b": ([2], ALL), "c": ([1], ALL)}, repeats=2, max_steps=T)
    assert list(times) == ["a", "b", "c"] and all(t > 0 for t in times.values()) and rollouts == [plain, [2], [1]] * 2
    rollouts.clear()
    assert all(t != t for t in time_policies(model, splits, {"a": (plain, DEFAULT_OBSERVATION)}, repeats=0).values()) and rollouts == []
    with pytest.raises(ValueError, match=">= 0"):
        time_policy(model, splits, plain, repeats=-1)
    model.train(was_training)


def test_exit_rules_act_on_what_they_observe():
    lay = ObservationLayout(3, 48, ALL)
    obs = torch.zeros(4, lay.size)
    obs[:, lay.step_fraction] = torch.tensor([0.0, 0.0, 2 / 6, 3 / 6])
    obs[:, lay.confidence] = torch.tensor([0.99, 0.5, 0.5, 0.5])
    assert confidence_threshold(lay, 6, 0.9)(obs).tolist() == [0, 1, 3, 0]  # confident; next in order; last; order used up
    obs[:, lay.residuals] = torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.0, 0.3], [0.0, 0.2, 0.9]])
    assert residual_threshold(lay, 0.25)(obs).tolist() == [0, 1, 3, 3]


def test_threshold_sweeps_trace_a_curve_from_the_plain_path_to_every_layer(warm):
    points = sweep("confidence", warm.model, warm.splits, max_steps=warm.max_steps, observation=DEFAULT_OBSERVATION, taus=(0.0, 1.0))
    assert points[0]["compute_fraction"] == pytest.approx(1 / 6, rel=0.3)  # tau 0: always answer at once
    assert points[1]["compute_fraction"] == pytest.approx(1.0)  # tau 1: every layer, then answer
    residual = sweep("residual", warm.model, warm.splits, max_steps=warm.max_steps, observation=ALL, taus=(10.0,))
    assert residual[0]["compute"] > 1.0  # the probe is paid even when the rule answers at once
    curve = [
        {"compute_fraction": 0.2, "accuracy": 0.9},
        {"compute_fraction": 0.6, "accuracy": 0.95},
        {"compute_fraction": 1.0, "accuracy": 0.94},
    ]
    assert accuracy_at_compute(curve, 0.4) == pytest.approx(0.925) and accuracy_at_compute(curve, 1.0) == pytest.approx(0.95)
    assert compute_at_accuracy(curve, 0.94) == 0.6 and compute_at_accuracy(curve, 0.99) is None


def test_imitating_the_oracle_learns_what_the_observation_reveals():
    """A small task (the label is the sign of x0) on which a warmed-up model answers from its
    activations: the imitation fits the oracle's demonstrations and answers the test split."""
    gen = torch.Generator().manual_seed(0)
    n = 600
    x = torch.randn(n, 4, generator=gen)
    y = (x[:, 0] > 0).long()
    splits = DatasetSplits("toy", x[:500], y[:500], x[500:], y[500:], 2)
    engine = make_engine(EnvConfig(splits.name, pretrain_epochs=0, cotrain=False, seed=0, observation=DEFAULT_OBSERVATION), data=splits)
    trainer = MainModelTrainer(engine.model, splits.x_train, splits.y_train, alternatives=("plain",), max_steps=engine.max_steps)
    trainer.warm_up(15, max_steps=engine.max_steps)
    demos = demonstrations(
        engine.model,
        splits.x_train[:50],
        splits.y_train[:50],
        max_steps=engine.max_steps,
        observation=DEFAULT_OBSERVATION,
        reward=RewardConfig(),
    )
    assert demos.episodes == 50 and demos.obs.shape[1] == engine.layout.size
    assert int((demos.actions == 0).sum()) == 50  # every demonstrated episode ends with its answer
    ceiling = learnable_ceiling(engine.model, splits, max_steps=engine.max_steps, observation=DEFAULT_OBSERVATION, epochs=40)
    assert ceiling.train_action_accuracy > 0.8
    assert ceiling.report.accuracy >= 0.9 and ceiling.report.num_samples == 100


def test_comparison_puts_an_agent_beside_every_baseline_and_checks_the_targets(warm):
    from agents.compare import compare_to_baselines, comparison_table, increasing_paths

    assert increasing_paths(3) == [[], [1], [2], [3], [1, 2], [1, 3], [2, 3], [1, 2, 3]]
    model, splits = warm.model, warm.splits
    small = DatasetSplits(
        "digits", splits.x_train[:200], splits.y_train[:200], splits.x_test[:120], splits.y_test[:120], splits.num_classes
    )
    plain = lambda obs: torch.zeros(obs.shape[0], dtype=torch.long)  # noqa: E731
    result = compare_to_baselines(
        model, small, plain, reward=RewardConfig(lam=0.005), max_steps=6, observation=DEFAULT_OBSERVATION, ceiling_train_limit=100
    )
    fixed = result["fixed_paths"]
    assert list(fixed) == ["NOP", "L1", "L2", "L3", "L1,L2", "L1,L3", "L2,L3", "L1,L2,L3"]
    # the plain policy is the fixed NOP path, and every layer is the reference
    assert result["agent"]["accuracy"] == fixed["NOP"]["accuracy"]
    assert result["agent"]["compute_fraction"] == pytest.approx(fixed["NOP"]["compute_fraction"])
    assert fixed["L1,L2,L3"]["compute_fraction"] == pytest.approx(1.0) and result["fpi_all_accuracy"] == fixed["L1,L2,L3"]["accuracy"]
    cheapest = result["cheapest_fixed_path_at_fpi_all_accuracy"]
    assert fixed[cheapest["path"]]["accuracy"] >= result["fpi_all_accuracy"] - 0.005
    assert all(
        p["compute_fraction"] >= cheapest["compute_fraction"] for p in fixed.values() if p["accuracy"] >= result["fpi_all_accuracy"] - 0.005
    )
    # the oracle is at least as accurate as anything else, at no more compute than FPI everywhere
    assert result["oracle"]["accuracy"] >= max(p["accuracy"] for p in fixed.values())
    assert len(result["confidence_curve"]) > 5 and len(result["residual_curve"]) > 5
    assert result["ceiling"]["demonstrations"] >= 100
    ceiling = result["ceiling"]["report"]
    assert result["headroom"] == pytest.approx(cheapest["compute_fraction"] / ceiling["compute_fraction"])
    assert result["ceiling_reaches_fpi_all_accuracy"] == (ceiling["accuracy"] >= result["fpi_all_accuracy"] - 0.005)
    # on part of the test split, everything is measured on that part
    part = compare_to_baselines(
        model,
        small,
        plain,
        reward=RewardConfig(lam=0.005),
        max_steps=6,
        observation=DEFAULT_OBSERVATION,
        ceiling_train_limit=50,
        test_limit=40,
    )
    assert part["test_samples"] == 40 and part["agent"]["num_samples"] == 40 and part["ceiling"]["report"]["num_samples"] == 40
    targets = result["targets"]
    assert targets["compute_at_most_0.6_of_cheapest_fixed_path"] == (
        result["agent"]["compute_fraction"] <= 0.6 * cheapest["compute_fraction"]
    )
    assert targets["all"] == all(v for k, v in targets.items() if k != "all")
    text = comparison_table(result)
    assert "learnable ceiling" in text and "headroom" in text and "fixed L2,L3" in text
