"""convscope.utils: thread count set and restored, its argument checked."""
from __future__ import annotations

import pytest
import torch

from convscope.utils import set_threads, threads_set


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_set_threads_rejects_anything_but_a_positive_integer(bad):
    with pytest.raises(ValueError, match="threads must be >= 1"):
        set_threads(bad)


def test_threads_set_restores_the_count():
    before = torch.get_num_threads()
    with threads_set(1) as n:
        assert n == torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with threads_set(None) as n:
        assert n == before
