"""Fixed paths evaluated together: shared prefixes are computed once, and every path's results are
those of evaluating it alone."""

import pytest
import torch
import torch.nn.functional as F

from agents.compare import fixed_path_reports, increasing_paths
from dynalay_env import build_engine, evaluate_fixed_policies, evaluate_policy, sequence_name
from main_models import evaluate_fixed_path, evaluate_fixed_paths


@pytest.fixture(scope="module")
def engine():
    return build_engine(1, dataset="digits", pretrain_epochs=1, progress=False, cotrain=False, seed=0)


def _alone(model, x, y, path, batch_size, observation_cost):
    """One path evaluated by itself, step by step along run_paths: the reference."""
    model.eval()
    full = float(model.straightforward_flops)
    out = {"correct": [], "compute": [], "iterations": [], "loss": []}
    with torch.no_grad():
        for start in range(0, y.shape[0], batch_size):
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
            paths = torch.tensor(path, dtype=torch.long).expand(yb.shape[0], len(path))
            logits, step_iters = model.run_paths(xb, paths, per_step=True)
            cost = torch.full((yb.shape[0],), 1.0 + observation_cost)
            for t, action in enumerate(path):
                if action > 0:
                    cost += (model.fpi_step_flops(paths[:, t] - 1, step_iters[:, t]) / full + observation_cost).float()
            out["correct"].append(logits.argmax(dim=1) == yb)
            out["compute"].append(cost)
            out["iterations"].append(step_iters.sum(dim=1))
            out["loss"].append(F.cross_entropy(logits, yb, reduction="none"))
    return {k: torch.cat(v) for k, v in out.items()}


@pytest.mark.parametrize("observation_cost", [0.0, 0.125])
def test_paths_evaluated_together_equal_each_path_alone(engine, observation_cost):
    model, s = engine.model, engine.splits
    x, y = s.x_test[:300], s.y_test[:300]
    # out of prefix order, a repeat, a NOP inside a path and the empty path; 300 rows in batches of 128
    paths = [[1, 2, 3], [1], [], [2, 3], [1, 3], [1, 2, 3], [2, 0, 3], [3], [1, 2]]
    together = evaluate_fixed_paths(model, x, y, paths, batch_size=128, observation_cost=observation_cost)
    assert len(together) == len(paths)
    for path, got in zip(paths, together):
        want = _alone(model, x, y, path, 128, observation_cost)
        for key in want:
            assert torch.equal(got[key], want[key]), (path, key)
        single = evaluate_fixed_path(model, x, y, path, batch_size=128, observation_cost=observation_cost)
        assert all(torch.equal(single[k], got[k]) for k in want)


def test_shared_prefixes_are_computed_once(engine, monkeypatch):
    model, s = engine.model, engine.splits
    x, y = s.x_test[:100], s.y_test[:100]
    calls = {"fpi_step": [], "straightforward": 0}
    fpi_step, straightforward = model.fpi_step, model.straightforward

    def counted_step(state, choice):
        calls["fpi_step"].append(int(choice[0]))
        return fpi_step(state, choice)

    def counted_plain(xb):
        calls["straightforward"] += 1
        return straightforward(xb)

    monkeypatch.setattr(model, "fpi_step", counted_step)
    monkeypatch.setattr(model, "straightforward", counted_plain)
    model.train()
    evaluate_fixed_paths(model, x, y, increasing_paths(3), batch_size=64)
    # two batches; each: the plain pass once, then L1, L2, L3, L1->L2, L1->L3, L2->L3, L1,L2->L3
    assert calls["straightforward"] == 2
    assert calls["fpi_step"] == [1, 2, 3, 2, 3, 3, 3] * 2
    assert model.training  # the evaluation runs in eval mode and restores the mode it found


def test_fixed_policies_and_the_baselines_table_match_paths_evaluated_one_by_one(engine):
    model, s = engine.model, engine.splits
    splits = s.head(None, 200)
    rollout = {"reward": engine.reward.fixed(0.05), "max_steps": engine.max_steps}
    every = [1, 2, 3]
    reference = evaluate_policy(model, splits, every, **rollout)
    paths = increasing_paths(3)
    together = evaluate_fixed_policies(model, splits, paths, **rollout)
    for path, report in zip(paths, together):
        alone = evaluate_fixed_policies(model, splits, [path], reference=reference, **rollout)[0]
        assert report.as_dict() == alone.as_dict()
        assert report.fpi_all_compute == reference.compute and report.fpi_all_accuracy == reference.accuracy
    by_name = fixed_path_reports(model, splits, reference, **rollout)
    assert list(by_name) == [sequence_name(p) for p in paths]
    assert by_name["L1,L2,L3"] is reference  # a given reference is reused, not evaluated again
    assert by_name["L2,L3"].as_dict() == together[paths.index([2, 3])].as_dict()
