"""Setting torch's intra-op thread count for a measurement, and restoring it."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op thread count (None: leave it) and return the previous one, to restore in a `finally`.
    ValueError unless threads is None or >= 1."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be >= 1 (an integer); got {threads!r}")
    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    return old


@contextlib.contextmanager
def threads_set(threads: int | None) -> Iterator[int]:
    """`with threads_set(n):` runs its body with n intra-op threads (None: unchanged) and restores the count."""
    old = set_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(old)
