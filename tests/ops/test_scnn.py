import pytest
import torch
from torch.nn import functional as F

from convscope.ops import SpatialMessagePassing


def test_downward_pass_by_hand():
    # one channel, kernel 1: row i += relu(w * updated row i-1)
    m = SpatialMessagePassing(1, kernel_size=1, directions=("down",))
    with torch.no_grad():
        m.convs["down"].weight.fill_(2.0)
    x = torch.tensor([[1.0, -1.0], [0.5, 0.0], [-3.0, 1.0]]).view(1, 1, 3, 2)
    r0 = torch.tensor([1.0, -1.0])
    r1 = torch.tensor([0.5, 0.0]) + F.relu(2 * r0)        # [2.5, 0]
    r2 = torch.tensor([-3.0, 1.0]) + F.relu(2 * r1)       # [2, 1]
    torch.testing.assert_close(m(x)[0, 0], torch.stack([r0, r1, r2]))


def test_directions_are_sequential_and_shape_preserved():
    torch.manual_seed(0)
    m = SpatialMessagePassing(4, kernel_size=3)
    x = torch.randn(2, 4, 5, 6)
    y = m(x)
    assert y.shape == x.shape
    # up pass alone == down pass on the vertically flipped map with the same conv
    up = SpatialMessagePassing(4, 3, directions=("up",))
    down = SpatialMessagePassing(4, 3, directions=("down",))
    down.convs["down"].weight.data.copy_(up.convs["up"].weight.data)
    torch.testing.assert_close(up(x), down(x.flip(2)).flip(2))
    with pytest.raises(ValueError, match="directions"):
        SpatialMessagePassing(4, directions=("diagonal",))
