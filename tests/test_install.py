"""The pinned torch/torchvision pair installs and imports cleanly, compiled operators included."""

import importlib.metadata

import torch


def test_torchvision_imports_and_loads_its_compiled_operators():
    import torchvision
    from torchvision.ops import nms

    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5)
    assert keep.tolist() == [0, 2]
    assert torchvision.__version__.startswith("0.29.1")


def test_pinned_pair_matches_pyproject():
    assert importlib.metadata.version("torch").startswith("2.14.1")
    assert importlib.metadata.version("torchvision").startswith("0.29.1")


def test_runtime_dependencies_import():
    import gymnasium
    import sklearn  # noqa: F401
    import stable_baselines3
    import tensorboard  # noqa: F401

    assert int(gymnasium.__version__.split(".")[0]) == 1
    assert int(stable_baselines3.__version__.split(".")[0]) == 2
