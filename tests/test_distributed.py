"""Data-parallel co-training on 2 CPU ranks (gloo): the all-reduced update is the single-process
update on the union of the ranks' rows, replicas stay equal, a rank without rows neither hangs nor
poisons the update, and the torchrun entry point trains end to end."""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from main_models import DistributedMainModelTrainer, MainModelTrainer, build_main_model, load_dataset

ROOT = Path(__file__).resolve().parent.parent
COTRAIN_EVERY = 8
# rows each rank finishes, per scenario: uneven shards, and one rank with none at all
SHARDS = {"uneven": ([3, 17, 40, 41, 99], [5, 8, 200]), "one_rank_idle": ([3, 17, 40, 41, 99, 5, 8, 200], [])}


def _model_and_data(seed: int = 0, dataset: str = "parity"):
    # parity's LSTM has no parametrized weight: the comparison is exact to the last bit of every
    # parameter, with nothing else (a spectral norm's power-iteration vectors) to compare
    splits = load_dataset(dataset, None, seed=0)
    torch.manual_seed(seed)
    return build_main_model(splits), splits


def _paths(rows: list[int]) -> torch.Tensor:
    # a different path per row, some of them stopping at once
    table = torch.tensor([[1, 2, 3], [2, 0, 0], [3, 3, 0], [0, 0, 0], [1, 0, 0]])
    return table[torch.tensor(rows, dtype=torch.long) % len(table)] if rows else torch.zeros(0, 3, dtype=torch.long)


def _rank(rank: int, world: int, scenario: str, out: str) -> None:
    torch.set_num_threads(1)
    # a file rendezvous in the test's own directory: no port to pick, so none another process can take
    dist.init_process_group("gloo", init_method=f"file://{out}/rendezvous", rank=rank, world_size=world)
    try:
        # rank 1 starts from other weights: the trainer must broadcast rank 0's
        model, splits = _model_and_data(seed=rank)
        trainer = DistributedMainModelTrainer(model, splits.x_train, splits.y_train, cotrain_every=COTRAIN_EVERY)
        equal_at_start = trainer.replicas_equal()
        rows = SHARDS[scenario][rank]
        take_step = trainer.optimizer.step

        def step_and_keep_gradient(*args, **kwargs):
            if rank == 0:
                torch.save([p.grad.detach().clone() for p in model.parameters()], Path(out) / "gradient.pt")
            return take_step(*args, **kwargs)

        trainer.optimizer.step = step_and_keep_gradient
        steps_before_update = 0
        if rows:
            trainer.record(torch.tensor(rows), _paths(rows))
        for _ in range(3):  # environment steps: the update happens at the first, then nothing is buffered
            trainer.step_finished()
            steps_before_update += trainer.updates == 0
        result = {
            "updates": trainer.updates,
            "equal_at_start": equal_at_start,
            "equal_after": trainer.replicas_equal(),
            "finite": all(bool(torch.isfinite(p).all()) for p in model.parameters()),
            "buffered": int(trainer._buffer_index.numel()),
        }
        if rank == 0:
            torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, Path(out) / "weights.pt")
            (Path(out) / "result.json").write_text(json.dumps(result))
        else:
            (Path(out) / "result1.json").write_text(json.dumps(result))
        # no rank tears its connections down while the other may still be reading from them (a peer
        # closing mid-transfer aborts gloo's receiving thread: "terminate called without an active
        # exception")
        dist.barrier()
    finally:
        gc.collect()  # the trainer's DDP wrapper is a reference cycle: freed before its process group (train_distributed.py)
        dist.destroy_process_group()


@pytest.mark.parametrize("scenario", list(SHARDS))
def test_an_all_reduced_update_is_the_single_process_update_on_the_union_of_rows(scenario, tmp_path):
    mp.spawn(_rank, args=(2, scenario, str(tmp_path)), nprocs=2, join=True)
    result = json.loads((tmp_path / "result.json").read_text())
    other = json.loads((tmp_path / "result1.json").read_text())
    assert result["equal_at_start"] and result["equal_after"] and other["equal_after"]
    assert result["updates"] == other["updates"] == 1 and result["buffered"] == other["buffered"] == 0
    assert result["finite"] and other["finite"]
    # the same update in one process, on every rank's rows at once: the all-reduced gradient is its
    # gradient (up to the order of float sums), and so the weights after the step agree
    model, splits = _model_and_data(seed=0)
    rows = SHARDS[scenario][0] + SHARDS[scenario][1]
    trainer = MainModelTrainer(model, splits.x_train, splits.y_train)
    model.train()
    trainer.loss(torch.tensor(rows), _paths(rows)).backward()
    gradient = torch.load(tmp_path / "gradient.pt", weights_only=True)
    for (name, p), g in zip(model.named_parameters(), gradient):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-7, msg=name)
    trainer.optimizer.step()
    distributed = torch.load(tmp_path / "weights.pt", weights_only=True)
    moved = [float((distributed[name] - value).abs().max()) for name, value in model.state_dict().items()]
    assert max(moved) < 1e-3 * 0.5  # Adam's first step moves each weight by about lr = 1e-3


def test_the_trainer_refuses_to_start_without_a_process_group():
    model, splits = _model_and_data(dataset="digits")
    with pytest.raises(RuntimeError, match="init_process_group"):
        DistributedMainModelTrainer(model, splits.x_train, splits.y_train)


@pytest.mark.slow
def test_torchrun_trains_with_two_ranks_end_to_end(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert torchrun is not None
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            torchrun,
            "--standalone",
            "--nproc-per-node",
            "2",
            str(ROOT / "agents" / "train_distributed.py"),
            "--dataset",
            "digits",
            "--total-timesteps",
            "1024",
            "--num-envs",
            "16",
            "--pretrain-epochs",
            "1",
            "--cotrain-every",
            "16",
            "--n-steps",
            "4",
            "--no-progress",
            "--logdir",
            str(tmp_path),
            "--run-name",
            "ddp",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    run = tmp_path / "ddp"
    evaluation = json.loads((run / "eval.json").read_text())
    assert evaluation["world_size"] == 2 and evaluation["timesteps"] >= 1024
    assert evaluation["cotrain_updates"] > 0 and evaluation["replicas_equal"] is True and evaluation["agent_replicas_equal"] is True
    assert 0 <= evaluation["accuracy"] <= 1
    assert (run / "main_model.pt").is_file() and (run / "config.json").is_file()
    assert "ranks 2" in proc.stdout
