"""RepLKNet's re-parameterised large-kernel depthwise conv (Ding et al., "Scaling Up Your Kernels to 31x31",
arXiv 2203.06717)."""
from __future__ import annotations

from ..conv_bn import ParallelConvBn


class ReparamLargeKernelConv(ParallelConvBn):
    """A depthwise K x K conv + BN in parallel with a depthwise small x small conv + BN (K = 31, small = 5 in
    RepLKNet-31), summed. Neither conv has a bias. The small kernel helps optimise the large one; after training
    `reparameterize()` adds it, zero-padded, into the large kernel, leaving one K x K depthwise conv with a bias.

    `small_kernel=None` keeps only the large conv + BN (RepLKNet-XL).
    """

    channels_last = False

    def __init__(self, dim: int, kernel_size: int = 31, small_kernel: int | None = 5, stride: int = 1) -> None:
        if kernel_size % 2 == 0 or (small_kernel is not None and small_kernel % 2 == 0):
            raise ValueError(f"kernel sizes must be odd; got kernel_size={kernel_size}, small_kernel={small_kernel}")
        branches = () if small_kernel is None else ((small_kernel, 1),)
        super().__init__(dim, dim, kernel_size, branches, stride=stride, groups=dim)
        self.small_kernel = small_kernel
