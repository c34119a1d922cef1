"""Main models (MLP, FPI-CNN, FPI-LSTM): shapes, convergence, cost model, model choice, an
environment on every dataset, and the fixed-path baseline script."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import copy_state, load_script
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from test_datasets import write_cifar10, write_cifar100, write_imdb, write_wikitext2
from torch.nn.utils import parametrize
from torch.utils.flop_counter import FlopCounterMode

from dynalay_env import DynaLayEnv
from main_models import (
    TRAINING_GRADS,
    ContractiveConvBlock,
    ContractiveTanhBlock,
    DatasetSplits,
    FPILayer,
    JacobiLSTMBlock,
    SolverSettings,
    build_main_model,
    load_dataset,
    load_digits,
)
from main_models.conv import conv_operator_norm
from main_models.lstm import sequential_lstm

ROOT = Path(__file__).resolve().parent.parent


def _images(n: int = 12, size: int = 32, classes: int = 10) -> DatasetSplits:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, size, size, generator=g)
    y = torch.arange(n) % classes
    return DatasetSplits("images", x, y, x[:6].clone(), y[:6].clone(), classes)


def _parity(**kw) -> DatasetSplits:
    return load_dataset("parity", num_train=kw.pop("num_train", 64), num_test=kw.pop("num_test", 32), max_len=kw.pop("max_len", 8), **kw)


MODEL_DATA = {
    "mlp": lambda: load_dataset("digits-graded"),
    "cnn": _images,
    "lstm": _parity,
    "grid-lstm": lambda: load_dataset("grid-lookup", num_train=40, num_test=20),
}


def _flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


# ---- shapes and passes -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mlp", "cnn", "lstm"])
def test_each_model_runs_every_pass_with_consistent_shapes(name):
    splits = MODEL_DATA[name]()
    torch.manual_seed(0)
    net = build_main_model(splits).eval()
    assert build_main_model(splits, model=name).num_layers == 3
    x = splits.x_test[:5]
    with torch.no_grad():
        state = net.straightforward(x)
        assert len(state.z) == 3 and all(z.shape[0] == 5 for z in state.z)
        logits = net.readout(state)
        assert logits.shape == (5, splits.num_classes) and torch.isfinite(logits).all()
        new, iters = net.fpi_step(copy_state(state), torch.tensor([0, 1, 2, 3, 1]))
        assert iters[0] == 0 and (iters[1:] > 0).all()
        for z_old, z_new in zip(state.z, new.z):
            assert z_new.shape == z_old.shape
            torch.testing.assert_close(z_new[0], z_old[0])
        paths = torch.tensor([[0, 0, 0], [1, 0, 0], [1, 2, 0], [1, 2, 3], [3, 3, 1]])
        logits, step_iters = net.run_paths(x, paths, per_step=True)
        assert logits.shape == (5, splits.num_classes) and step_iters.shape == (5, 3)
        assert torch.equal(net.run_paths(x, paths)[1], step_iters.sum(dim=1))
        torch.testing.assert_close(logits[0], net(x)[0])
        summary = net.layer_summaries(state)
        assert summary.shape == (5, net.summary_dim) and summary.abs().max() <= 1
    assert net.stem_flops > 0 and net.head_flops > 0 and (net.layer_flops > 0).all()


@pytest.mark.parametrize("name", ["mlp", "cnn", "lstm"])
def test_each_model_trains_through_a_fixed_path(name):
    splits = MODEL_DATA[name]()
    torch.manual_seed(0)
    net = build_main_model(splits)
    x, y = splits.x_train[:8], splits.y_train[:8]
    logits, _ = net.run_paths(x, torch.tensor([[1, 2, 3]]).expand(8, 3))
    torch.nn.functional.cross_entropy(logits, y).backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


# ---- cost model --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mlp", "cnn", "lstm", "grid-lstm"])
def test_declared_flops_match_counted_matmul_and_conv_flops(name):
    """torch's FlopCounterMode counts matmuls and convolutions; the declared FLOPs add only the
    elementwise work (bias, activations), a few percent at most."""
    splits = MODEL_DATA[name]()
    torch.manual_seed(0)
    net = build_main_model(splits).eval()
    x = splits.x_test[:1]
    with torch.no_grad(), parametrize.cached():
        state = net.straightforward(x)  # fills the cache: weight normalisation is not counted
        stem = _flops(lambda: net.stem(x))
        assert stem <= net.stem_flops <= 1.1 * stem
        for j, layer in enumerate(net.layers):
            inp = state.u if j == 0 else state.z[j - 1]
            counted = _flops(lambda: layer.apply_once(state.z[j], inp))
            assert counted <= net.layer_flops[j] <= 1.1 * counted
        head = _flops(lambda: net.readout(state))
        # plus at most one add per element of the last state (the CNN's global average pooling)
        assert head <= net.head_flops <= 1.1 * head + state.z[-1][0].numel() + splits.num_classes
        whole = _flops(lambda: net(x))
        assert whole <= net.straightforward_flops <= 1.1 * whole
        # a whole path: the engine reads out after every step, run_paths only at the end
        paths = torch.tensor([[1, 3, 2]])
        _, step_iters = net.run_paths(x, paths, per_step=True)
        counted = _flops(lambda: net.run_paths(x, paths)) + 2 * head
        declared = net.straightforward_flops + float(net.path_flops(paths, step_iters))
        assert counted <= declared
        if not hasattr(net.layers[0].block, "prepare"):
            # exact up to elementwise work when every iteration applies the whole block (a block
            # with prepare() hoists its input injection out of the loop, so k iterations cost less)
            assert declared <= 1.1 * counted


# ---- FPI-CNN -----------------------------------------------------------------------------------


def test_cnn_layers_are_contractive_and_converge():
    splits = _images()
    torch.manual_seed(0)
    net = build_main_model(splits).eval()
    assert net.layers[0].block.spatial == (8, 8)  # 32 -> 16 -> 8 in the stem
    for layer in net.layers:
        block: ContractiveConvBlock = layer.block
        # the normalised kernel's true operator norm is at most 1, and the FFT bound is tight
        assert 0.8 <= conv_operator_norm(block.recurrent, block.spatial) <= 1.0 + 1e-4
    with torch.no_grad():
        state = net.straightforward(splits.x_test[:4])
        solved = net.layers[1](state.z[0], state.z[1])
    assert solved.converged.all() and (solved.residual < net.layers[1].tol).all()
    assert build_main_model(_images(size=8)).layers[0].block.spatial == (8, 8)  # small input: stride 1


def test_cnn_summary_is_per_channel_means():
    block = ContractiveConvBlock(6, 6, (4, 4))
    z = torch.rand(2, 6, 4, 4)
    torch.testing.assert_close(block.summarize(z), z.mean(dim=(2, 3)))


# ---- FPI-LSTM ----------------------------------------------------------------------------------


def _marked(u: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """Append the real-token mark of front-padded sequences of the given lengths."""
    T = u.shape[1]
    mark = (torch.arange(T)[None, :] >= T - torch.tensor(lengths)[:, None]).float()
    return torch.cat([u, mark.unsqueeze(-1)], dim=-1)


def test_lstm_fixed_point_is_the_sequential_lstm_and_iterations_track_length():
    torch.manual_seed(0)
    T = 10
    block = JacobiLSTMBlock(5, 8, T)
    layer = FPILayer(block, SolverSettings(tol=1e-9, max_iter=T + 1))
    lengths = [10, 7, 3, 1]
    u = _marked(torch.randn(4, T, 5), lengths)
    with torch.no_grad():
        solved = layer(u)
        reference = sequential_lstm(block, u)
    assert solved.converged.all()
    # a sequence of n real tokens is exact after n applications, seen as a zero residual at n + 1
    assert (solved.iterations <= torch.tensor(lengths) + 1).all() and solved.iterations[0] > solved.iterations[3]
    torch.testing.assert_close(solved.z, reference, atol=1e-6, rtol=0)
    # the fixed point on padded input is the LSTM run from the first real token
    with torch.no_grad():
        tail = sequential_lstm(block, u[1:2, T - 7 :])
    torch.testing.assert_close(solved.z[1:2, T - 7 :], tail, atol=1e-6, rtol=0)
    assert (solved.z[1, : T - 7] == 0).all()
    # straightforward mode (one application from zero) sees no previous position
    with torch.no_grad():
        once = block(block.initial_state(u), u)
        solo = sequential_lstm(block, u[:, 5:6])
    torch.testing.assert_close(once[:, 5:6], solo)


def test_lstm_implicit_gradient_is_backprop_through_time():
    torch.manual_seed(0)
    T = 7
    block = JacobiLSTMBlock(3, 6, T)
    layer = FPILayer(block, SolverSettings(tol=1e-10, max_iter=T + 1, grad="implicit", backward_tol=1e-10))
    feats = torch.randn(2, T, 3, requires_grad=True)
    u = _marked(feats, [7, 4])
    weight = torch.randn(2, T, 13)
    (layer(u).z * weight).sum().backward()
    implicit = (feats.grad.clone(), block.gates.weight.grad.clone())
    feats.grad, block.gates.weight.grad = None, None
    (sequential_lstm(block, u) * weight).sum().backward()
    torch.testing.assert_close(implicit[0], feats.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(implicit[1], block.gates.weight.grad, atol=1e-5, rtol=1e-4)


def test_a_sweep_over_many_rows_runs_in_chunks_with_each_rows_own_values(monkeypatch):
    # a CPU sweep without autograd splits its rows into cache-sized chunks: the chunks must
    # cover every row once, in place, with the values (and so the solve's iteration counts) of
    # the unchunked sweep, bit for bit
    import main_models.lstm as lstm

    torch.manual_seed(0)
    T = 6
    block = JacobiLSTMBlock(5, 8, T)
    layer = FPILayer(block, SolverSettings(tol=1e-9, max_iter=T + 1))
    u = _marked(torch.randn(23, T, 5), [6, 5, 4, 3, 2, 1] * 3 + [6, 6, 3, 1, 2])
    with torch.no_grad():
        z = block(block.initial_state(u), u)
        whole, whole_solve = block(z, u), layer(u)
    rows_per_chunk = 4
    monkeypatch.setattr(lstm, "CPU_CHUNK_BYTES", rows_per_chunk * T * 4 * 8 * 4)
    calls = []
    sweep = block._sweep
    monkeypatch.setattr(block, "_sweep", lambda z, u: calls.append(z.shape[0]) or sweep(z, u))
    with torch.no_grad():
        chunked, chunked_solve = block(z, u), layer(u)
    assert calls[0:6] == [4, 4, 4, 4, 4, 3]
    assert torch.equal(chunked, whole)
    assert torch.equal(chunked_solve.z, whole_solve.z) and torch.equal(chunked_solve.iterations, whole_solve.iterations)
    calls.clear()
    z.requires_grad_(True)
    block(z, u).sum().backward()  # with autograd: one sweep, as the graph of one application
    assert calls == [23]


def test_lstm_upper_layers_read_only_h_and_the_mark_of_the_layer_below():
    splits = _parity()
    net = build_main_model(splits)
    assert net.layers[0].block.input_dim == 32 and net.layers[1].block.input_dim == 64
    with torch.no_grad():
        below = net.straightforward(splits.x_test[:2]).z[0]
        assert below.shape == (2, 8, 129)
        torch.testing.assert_close(below[..., -1], (splits.x_test[:2] > 0).float())
        changed_c = below.clone()
        changed_c[..., 64:128] += 5.0
        block = net.layers[1].block
        state = block.initial_state(below)
        torch.testing.assert_close(block(state, below), block(state, changed_c))


def test_lstm_stem_refuses_float_inputs():
    net = build_main_model(_parity())
    with pytest.raises(TypeError, match="integer token ids"):
        net.stem(torch.zeros(2, 8))


# ---- model choice ------------------------------------------------------------------------------


def test_model_choice_follows_the_data_and_refuses_misfits():
    digits = load_dataset("digits")
    assert type(build_main_model(digits).layers[0].block).__name__ == "ContractiveTanhBlock"
    assert isinstance(build_main_model(_images()).layers[0].block, ContractiveConvBlock)
    assert isinstance(build_main_model(_parity()).layers[0].block, JacobiLSTMBlock)
    with pytest.raises(ValueError, match=r"unknown model 'transformer'; available: mlp, cnn, lstm"):
        build_main_model(digits, model="transformer")
    with pytest.raises(
        ValueError,
        match=r"model 'cnn' reads float \(N, C, H, W\) inputs, but dataset 'digits' has float \(N, features\) inputs of shape \(64,\)",
    ):
        build_main_model(digits, model="cnn")
    with pytest.raises(ValueError, match=r"model 'mlp' .* dataset 'parity' has integer token ids"):
        build_main_model(_parity(), model="mlp")
    assert build_main_model(digits, hidden=16).layers[0].block.dim == 16  # builder options pass through


# ---- an environment on every dataset and model -------------------------------------------------


def _tiny_splits(kind: str, tmp_path: Path, monkeypatch) -> DatasetSplits:
    import os

    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))
    if kind == "cifar10":
        write_cifar10(tmp_path)
        return load_dataset("cifar10", str(tmp_path))
    if kind == "cifar100":
        write_cifar100(tmp_path)
        return load_dataset("cifar100", str(tmp_path))
    if kind == "imdb":
        write_imdb(tmp_path)
        return load_dataset("imdb", str(tmp_path), max_len=8)
    if kind == "wikitext2":
        write_wikitext2(tmp_path)
        return load_dataset("wikitext2", str(tmp_path), seq_len=6, stride=2)
    if kind == "parity":
        return _parity()
    if kind == "digits-graded":
        return load_dataset("digits-graded")
    path = tmp_path / "mine.npz"
    rng = np.random.default_rng(0)
    x = {"npz-flat": rng.random((30, 5)), "npz-image": rng.random((30, 1, 8, 8)), "npz-tokens": rng.integers(0, 7, (30, 6))}[kind]
    np.savez(path, x=x, y=np.arange(30) % 3)
    return load_dataset(str(path))


@pytest.mark.parametrize(
    "kind, model",
    [
        ("digits-graded", "mlp"),
        ("parity", "lstm"),
        ("cifar10", "cnn"),
        ("cifar100", "cnn"),
        ("imdb", "lstm"),
        ("wikitext2", "lstm"),
        ("npz-flat", "mlp"),
        ("npz-image", "cnn"),
        ("npz-tokens", "lstm"),
    ],
)
def test_environment_on_every_dataset_passes_both_checkers(kind, model, tmp_path, monkeypatch):
    splits = _tiny_splits(kind, tmp_path, monkeypatch)
    env = DynaLayEnv(pretrain_epochs=0, data=splits, cotrain_every=8)
    block = env.engine.model.layers[0].block
    assert {"mlp": "ContractiveTanhBlock", "cnn": "ContractiveConvBlock", "lstm": "JacobiLSTMBlock"}[model] == type(block).__name__
    gym_check_env(env, skip_render_check=True)
    sb3_check_env(DynaLayEnv(pretrain_epochs=0, data=splits, lam_range=(0.0, 0.5)), warn=True)
    obs, _ = env.reset(seed=0)
    obs, reward, terminated, _, info = env.step(1)
    assert np.isfinite(obs).all() and info["fpi_iterations"] > 0
    _, _, terminated, _, info = env.step(0)
    assert terminated and info["compute"] > 1.0


# ---- the fixed-path baseline script ------------------------------------------------------------


def _baseline_args(tmp_path: Path, layers: str, name: str) -> list[str]:
    return [
        "--dataset",
        "parity",
        "--data-option",
        "num_train=48",
        "--data-option",
        "num_test=40",
        "--data-option",
        "max_len=6",
        "--fpi-layers",
        layers,
        "--epochs",
        "1",
        "--out",
        str(tmp_path / name),
        "--no-progress",
        "--seed",
        "3",
    ]


def test_fixed_paths_writes_accuracy_compute_levels_and_per_sample_results(tmp_path, capsys):
    fixed_paths = load_script("benchmarks/fixed_paths.py")

    plain = fixed_paths.main(_baseline_args(tmp_path, "", "m0.json"))
    full = fixed_paths.main(_baseline_args(tmp_path, "1,2,3", "m3.json"))
    saved = json.loads((tmp_path / "m3.json").read_text())
    assert saved["test_accuracy"] == pytest.approx(full["test_accuracy"]) and saved["path"] == [1, 2, 3]
    assert plain["compute"] == pytest.approx(1.0) and plain["mean_fpi_iterations"] == 0
    assert full["compute"] > 1.0 and full["model"] == "lstm" and full["num_test"] == 40
    for result in (plain, full):
        assert len(result["per_sample"]["correct"]) == 40 and len(result["train_loss"]) == 1
        assert sum(row["count"] for row in result["per_difficulty"].values()) == 40
        assert result["train_seconds"] > 0 and result["wall_seconds"] >= result["train_seconds"]
    per_sample = torch.tensor(full["per_sample"]["correct"]).float().mean()
    assert float(per_sample) == pytest.approx(full["test_accuracy"])
    assert "test accuracy" in capsys.readouterr().out

    oracle = fixed_paths.main(
        ["--oracle", str(tmp_path / "m0.json"), str(tmp_path / "m3.json"), "--out", str(tmp_path / "oracle.json"), "--json"]
    )
    assert oracle["oracle_accuracy"] >= max(plain["test_accuracy"], full["test_accuracy"])
    assert 1.0 <= oracle["oracle_compute"] <= full["compute"]
    assert sum(oracle["choice_frequency"].values()) == pytest.approx(1.0)
    assert json.loads((tmp_path / "oracle.json").read_text())["oracle_accuracy"] == oracle["oracle_accuracy"]
    # a result file is never overwritten by accident
    before = (tmp_path / "m3.json").read_text()
    with pytest.raises(SystemExit) as exc:
        fixed_paths.main(_baseline_args(tmp_path, "1", "m3.json"))
    assert exc.value.code == 2 and "exists" in capsys.readouterr().err and (tmp_path / "m3.json").read_text() == before


def test_fixed_paths_refuses_bad_flags(tmp_path, capsys):
    fixed_paths = load_script("benchmarks/fixed_paths.py")

    for argv, message in [
        (["--fpi-layers", "1,x"], "--fpi-layers must be a comma-separated list"),
        (["--fpi-layers", "1,4", "--dataset", "digits"], r"layer numbers in 1\.\.3"),
        (["--dataset", "digits"], "--fpi-layers is required"),
        (["--fpi-layers", "", "--dataset", "nope"], "unknown dataset 'nope'"),
        (["--fpi-layers", "", "--model", "cnn"], "model 'cnn' reads"),
        (["--fpi-layers", "", "--epochs", "0"], "--epochs"),
        (["--fpi-layers", "", "--data-option", "max_len"], "KEY=VALUE"),
        (["--fpi-layers", "", "--device", "tpu9"], "--device must be"),
        (["--oracle", str(tmp_path / "absent.json")], "--oracle"),
    ]:
        with pytest.raises(SystemExit) as exc:
            fixed_paths.main(argv)
        assert exc.value.code == 2, argv
        assert re.search(message, capsys.readouterr().err), (argv, message)
    # as a script, from any directory: the installed packages are found
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "fixed_paths.py"), "--fpi-layers", "9", "--dataset", "digits"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and "layer numbers in 1..3" in proc.stderr


def test_exact_gradient_is_the_implicit_gradient_at_the_scanned_fixed_point():
    """grad="exact" takes the Jacobi LSTMs' direct form (the sequential scan) when a gradient is
    needed: the same fixed point and gradient as implicit differentiation, for less work; solves
    without autograd still iterate, so the charged compute is unchanged."""
    torch.manual_seed(0)
    T = 7
    block = JacobiLSTMBlock(3, 6, T).double()
    feats = torch.randn(3, T, 3, dtype=torch.float64, requires_grad=True)
    u = _marked(feats, [7, 4, 1])
    weight = torch.randn(3, T, 13, dtype=torch.float64)
    grads = {}
    for mode in ("implicit", "exact"):
        layer = FPILayer(block, SolverSettings(tol=1e-12, max_iter=T + 1, grad=mode, backward_tol=1e-12))
        solved = layer(u)
        (solved.z * weight).sum().backward()
        grads[mode] = (solved.z.detach(), feats.grad.clone(), block.gates.weight.grad.clone())
        feats.grad, block.gates.weight.grad = None, None
    for a, b in zip(grads["implicit"], grads["exact"]):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9)
    with torch.no_grad():  # no gradient needed: the layer iterates, with its per-row counts
        iterated = FPILayer(block, SolverSettings(tol=1e-12, max_iter=T + 1, grad="exact"))(u)
    assert iterated.iterations.tolist() != [T] * 3 and (iterated.iterations <= torch.tensor([7, 4, 1]) + 1).all()


def test_exact_fixed_point_of_a_grid_axis_is_its_jacobi_limit():
    from main_models.grid import AxisLSTMBlock

    torch.manual_seed(1)
    for axis in ("row", "col"):
        block = AxisLSTMBlock(4, 5, (3, 4), axis).double()
        u = torch.randn(2, 3, 4, 5, dtype=torch.float64)
        u[..., -1] = 1.0
        z = block.initial_state(u)
        for _ in range(5):
            z = block(z, u)
        torch.testing.assert_close(block.exact_fixed_point(u), z, atol=1e-12, rtol=0)


def test_exact_gradient_is_refused_for_blocks_without_a_direct_form():
    with pytest.raises(ValueError, match="grad 'exact' needs a block with an exact_fixed_point"):
        FPILayer(ContractiveTanhBlock(4, 3), SolverSettings(grad="exact"))
    net = build_main_model(load_digits())
    with pytest.raises(ValueError, match="ContractiveTanhBlock has none"):
        net.configure_solver(grad="exact")
    assert TRAINING_GRADS["grid-lstm"] == TRAINING_GRADS["lstm"] == "exact"
