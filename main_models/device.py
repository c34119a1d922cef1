"""The one place a device name becomes a ``torch.device``."""

from __future__ import annotations

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
