"""One way to turn a user's device string into a `torch.device`."""
from __future__ import annotations

import torch


def resolve_device(device: str | torch.device | None = "auto", local_rank: int | None = None) -> torch.device:
    """'auto' (or None): CUDA when torch sees it, else CPU; 'cpu'; 'cuda' or 'cuda:N'.

    `local_rank` picks this process's GPU under torchrun when the device names no index. ValueError for a
    device this machine lacks or a string torch does not parse.
    """
    if device is None or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]'; got {device!r}") from e
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]'; got {device!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' was asked for but torch sees no CUDA device on this machine")
        if dev.index is None and local_rank is not None:
            dev = torch.device("cuda", local_rank)
    return dev
