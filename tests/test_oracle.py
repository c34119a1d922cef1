import itertools

import torch

from dynalay_env import build_engine, oracle, oracle_paths
from main_models import DatasetSplits


def test_oracle_matches_brute_force_enumeration():
    engine = build_engine(1, dataset="digits", pretrain_epochs=0, cotrain=False, max_steps=2, seed=3)
    s = engine.splits
    sub = DatasetSplits(
        "digits",
        s.x_train[:4],
        s.y_train[:4],
        s.x_test[:48],
        s.y_test[:48],
        10,
        difficulty_train=torch.zeros(4, dtype=torch.long),
        difficulty_test=torch.arange(48) % 2,
    )
    model = engine.model.eval()
    best = torch.full((48,), float("inf"))
    with torch.no_grad():
        for length in range(3):
            for seq in itertools.product([1, 2, 3], repeat=length):
                state, compute = model.straightforward(sub.x_test), torch.ones(48)
                for a in seq:
                    state, it = model.fpi_step(state, torch.full((48,), a))
                    compute += (model.fpi_step_flops(torch.full((48,), a - 1), it) / model.straightforward_flops).float()
                ok = model.readout(state).argmax(1) == sub.y_test
                best = torch.where(ok & (compute < best), compute, best)
    solved = torch.isfinite(best)
    report = oracle(model, sub, max_steps=2)
    assert report.accuracy == float(solved.float().mean())
    assert abs(report.compute - float(torch.where(solved, best, torch.ones(48)).mean())) < 1e-5
    assert set(report.per_difficulty) == {0, 1}
    assert 0 < report.compute_fraction < 1


def test_the_fallback_oracle_answers_at_the_confidence_bar_else_at_all():
    """Demonstrations use the oracle's fallback: the cheapest sequence that answers with the label
    at min_confidence, else the cheapest that answers at all, else the plain path."""
    engine = build_engine(1, dataset="digits", pretrain_epochs=1, progress=False, cotrain=False, seed=0)
    model, s = engine.model, engine.splits
    x, y = s.x_test[:60], s.y_test[:60]
    confident = oracle_paths(model, x, y, max_steps=3, min_confidence=0.9)
    correct = oracle_paths(model, x, y, max_steps=3)
    both = oracle_paths(model, x, y, max_steps=3, min_confidence=0.9, fallback=True)
    assert bool((~confident.solved & correct.solved).any())  # some samples need the fallback
    assert torch.equal(both.solved, confident.solved | correct.solved)
    assert torch.equal(both.cost, torch.where(confident.solved, confident.cost, correct.cost))
    assert torch.equal(both.paths, torch.where(confident.solved.unsqueeze(1), confident.paths, correct.paths))
    # the second search covers only the rows the first left unsolved
    unsolved = oracle_paths(model, x[~confident.solved], y[~confident.solved], max_steps=3)
    assert both.evaluated == confident.evaluated + unsolved.evaluated <= confident.evaluated + correct.evaluated
    assert torch.equal(oracle_paths(model, x, y, max_steps=3, fallback=True).paths, correct.paths)  # no bar: nothing to fall back from
