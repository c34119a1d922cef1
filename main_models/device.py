"""The one place a device name becomes a ``torch.device``."""

from __future__ import annotations

import argparse

import torch


def resolve_device(device: str | torch.device, name: str = "device") -> torch.device:
    """``"auto"`` -> cuda when available, else cpu; ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` as given.

    Anything else, or cuda where none is available, is refused with a ``ValueError`` that names the
    setting (``name``, e.g. "--device") and says what is accepted."""
    if isinstance(device, torch.device):
        dev = device
    elif not isinstance(device, str):
        raise ValueError(f"{name} must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {type(device).__name__} {device!r}")
    elif device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise ValueError(f"{name} must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {device!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"{name} must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {str(dev)!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name} {str(dev)!r}: no CUDA device is available here; use 'cpu' or 'auto'")
    return dev


def local_device(device: str | torch.device, local_rank: int, name: str = "device") -> torch.device:
    """The device of one rank of a distributed run: ``device`` resolved as :func:`resolve_device`
    resolves it, then, where that is cuda, the rank's own GPU ``cuda:<local_rank>`` (one GPU per
    rank: an index given with ``cuda:N`` is replaced)."""
    dev = resolve_device(device, name)
    return torch.device("cuda", local_rank) if dev.type == "cuda" else dev


def set_threads(threads: int) -> None:
    """Set torch's intra-op CPU threads (0 keeps torch's default). They cost more than they give
    on these small tensors, and oversubscribe badly when anything else shares the cores (README.md,
    "Threads" under "Using DynaLay from other libraries")."""
    if not isinstance(threads, int) or threads < 0:
        raise ValueError(f"--threads must be an integer >= 0, got {threads!r}")
    if threads:
        torch.set_num_threads(threads)


def add_runtime_flags(parser: argparse.ArgumentParser, *, device: str | None = "auto") -> None:
    """The flags every script shares: ``--threads`` (default 1) and, unless ``device`` is None,
    ``--device`` with that default."""
    if device is not None:
        parser.add_argument("--device", default=device, help="cpu, cuda, cuda:N or auto")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (0: torch's default); the small models here run fastest on 1"
    )
