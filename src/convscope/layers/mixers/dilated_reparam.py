"""UniRepLKNet's Dilated Reparam Block (Ding et al., "UniRepLKNet: A Universal Perception Large-Kernel ConvNet
for Audio, Video, Point Cloud, Time-Series and Image Recognition", arXiv 2311.15599)."""
from __future__ import annotations

from ..conv_bn import ParallelConvBn

#: kernel size K -> the parallel dilated branches (kernel sizes, dilations), as in the official unireplknet.py
DILATED_BRANCHES: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {
    17: ((5, 9, 3, 3, 3), (1, 2, 4, 5, 7)),
    15: ((5, 7, 3, 3, 3), (1, 2, 3, 5, 7)),
    13: ((5, 7, 3, 3, 3), (1, 2, 3, 4, 5)),
    11: ((5, 5, 3, 3, 3), (1, 2, 3, 4, 5)),
    9: ((5, 5, 3, 3), (1, 2, 3, 4)),
    7: ((5, 3, 3), (1, 2, 3)),
    5: ((3, 3), (1, 2)),
}


class DilatedReparamBlock(ParallelConvBn):
    """A depthwise K x K conv + BN plus parallel depthwise dilated small convs + BN (no biases), summed.

    The dilated branches (e.g. for K = 13: 5x5 r1, 7x7 r2, 3x3 r3, 3x3 r4, 3x3 r5) add sparse, wide patterns that
    the large kernel can absorb: a k x k kernel with dilation r equals a dense (r(k-1)+1)-wide kernel with zeros
    between its taps, so after training `reparameterize()` merges every branch into one K x K depthwise conv.
    """

    channels_last = False

    def __init__(self, dim: int, kernel_size: int = 13) -> None:
        if kernel_size not in DILATED_BRANCHES:
            raise ValueError(f"DilatedReparamBlock takes kernel_size in {sorted(DILATED_BRANCHES)}; "
                             f"got {kernel_size}")
        kernel_sizes, dilations = DILATED_BRANCHES[kernel_size]
        super().__init__(dim, dim, kernel_size, tuple(zip(kernel_sizes, dilations, strict=False)), groups=dim)
        self.kernel_sizes, self.dilations = kernel_sizes, dilations
