"""SGConv: structured global convolution (Li et al., "What Makes Convolutional Models Great on Long Sequence
Modeling?", ICLR 2023, arXiv 2210.09298; official ctlllll/SGConv, `gconv_standalone.py`).

A global (sequence- or image-sized) depthwise kernel is not learned freely but *assembled* from a few small
learnable sub-kernels, one per scale, so parameters grow with log(length) and the kernel decays with distance:

1-D (official "cat" mode): sub-kernel i (C x d) is linearly upsampled by 2**max(0, i-1) and weighted by
    decay**i, and the pieces are concatenated, so the kernel covers d * 2**(n_scales-1) taps with the
    far pieces smoothest and smallest. The kernel is divided by its norm at initialisation (a fixed buffer; the
    official code records the same norm at its first forward). The convolution runs by FFT, zero-padded to 2L
    (linear, not circular): causal by default, or `bidirectional` (a second set of sub-kernels for the
    anti-causal side); plus a per-channel skip `D * x`.

2-D (our transfer of the same construction to images; the official repository has only the 1-D operator):
    sub-kernel i (C x d x d) is bilinearly upsampled to (d * 2**i) square, weighted by decay**i and
    zero-padded to the full centred (d * 2**(n_scales-1)) kernel ("sum" mode of the official code, centred), so
    each scale covers a larger square at a lower weight. Applied by 2-D FFT with the kernel centred ('same'
    zero padding), plus `D * x`.

`kernel()` materialises the kernel; the FFT result equals direct convolution with it (F.conv1d / F.conv2d);
`materialize()` keeps the materialised kernel as a buffer and drops the sub-kernels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _decay_weights(n_scales: int, decay: float) -> list[float]:
    return [decay ** i for i in range(n_scales)]


class _Materializable(nn.Module):
    """The deploy step both SGConv layers share: the kernel they generate from sub-kernels becomes a buffer."""

    kernel_list: nn.ParameterList
    deployed: bool

    def kernel(self) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def materialize(self) -> None:
        """Keep the materialised kernel as a buffer (the sub-kernels are only a parametrisation)."""
        if not self.deployed:
            self.register_buffer("kernel_buffer", self.kernel().detach().clone())
            del self.kernel_list
            self.deployed = True


class SGConv1d(_Materializable):
    """Depthwise structured global convolution over (B, C, L) sequences.

    dim: channels C; kernel_dim: d, the taps of each sub-kernel; n_scales: sub-kernels (the kernel spans
    d * 2**(n_scales-1) taps; official default: enough to reach l_max); decay: the per-scale weight factor
    (official `decay_min = decay_max = 2`: scale i weighted 2**(n-1-i), i.e. decay**i up to the normalisation,
    decay = 1/2); bidirectional: also an anti-causal kernel.
    """

    def __init__(self, dim: int, kernel_dim: int = 64, n_scales: int = 3, decay: float = 0.5,
                 bidirectional: bool = False) -> None:
        super().__init__()
        if n_scales < 1 or kernel_dim < 1:
            raise ValueError(f"SGConv1d needs n_scales >= 1 and kernel_dim >= 1; got {n_scales}, {kernel_dim}")
        self.dim, self.kernel_dim, self.n_scales, self.bidirectional = dim, kernel_dim, n_scales, bidirectional
        self.scale_weights = _decay_weights(n_scales, decay)
        heads = 2 if bidirectional else 1
        self.kernel_list = nn.ParameterList(nn.Parameter(torch.randn(heads, dim, kernel_dim))
                                            for _ in range(n_scales))
        self.D = nn.Parameter(torch.randn(dim))
        with torch.no_grad():
            self.register_buffer("kernel_norm", self._raw_kernel().norm(dim=-1, keepdim=True))
        self.deployed = False

    @property
    def kernel_size(self) -> int:
        return self.kernel_dim * 2 ** (self.n_scales - 1)

    def _raw_kernel(self) -> torch.Tensor:  # (heads, C, kernel_size)
        pieces = [F.interpolate(k, scale_factor=2 ** max(0, i - 1), mode="linear") * s if i > 1 else k * s
                  for i, (k, s) in enumerate(zip(self.kernel_list, self.scale_weights, strict=False))]
        return torch.cat(pieces, dim=-1)

    def kernel(self) -> torch.Tensor:
        """The kernel, (heads, C, kernel_size): heads[0] is causal (tap t acts on x[l - t]); heads[1] (when
        bidirectional) anti-causal (tap t acts on x[l + 1 + t], as in the official code)."""
        if self.deployed:
            return self.kernel_buffer
        return self._raw_kernel() / self.kernel_norm

    def full_kernel(self, length: int) -> torch.Tensor:
        """The kernel as one (C, 2*length + 1) filter for cross-correlation with padding `length` (tap j acts on
        x[l + j - length]): what F.conv1d(x, w[:, None], padding=length, groups=C) applies, minus the D skip."""
        k = self.kernel()[..., :length]
        k = F.pad(k, (0, length - k.shape[-1]))
        full = F.pad(k[0].flip(-1), (1, length))  # causal tap t at offset -t
        if self.bidirectional:  # anti-causal tap t at offset t + 1, as the official code places it
            full = full + F.pad(k[1], (length + 1, 0))
        return full

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        L = x.shape[-1]
        ct = torch.promote_types(x.dtype, torch.float32)  # FFTs in fp32 at least (bf16 has no FFT)
        k = self.kernel()[..., :L].to(ct)
        n = 2 * L
        k_f = torch.fft.rfft(k[0], n=n)
        if self.bidirectional:  # the anti-causal side at the end of the 2L window (offsets +1 .. +L)
            k_f = k_f + torch.fft.rfft(F.pad(k[1].flip(-1), (n - k.shape[-1], 0)), n=n)
        y = torch.fft.irfft(torch.fft.rfft(x.to(ct), n=n) * k_f, n=n)[..., :L]
        return (y + x.to(ct) * self.D.to(ct)[:, None]).to(x.dtype)


class SGConv2d(_Materializable):
    """Depthwise structured global convolution over (B, C, H, W) maps (a token mixer: same shape out).

    dim: channels; kernel_dim: d, the side of each sub-kernel; n_scales: sub-kernels (the kernel is
    (d * 2**(n_scales-1)) square: default 4 * 2**3 = 32, global for maps up to 16x16 and a 32x32 window
    beyond); decay: the per-scale weight factor.
    """

    channels_last = False

    def __init__(self, dim: int, kernel_dim: int = 4, n_scales: int = 4, decay: float = 0.5) -> None:
        super().__init__()
        if n_scales < 1 or kernel_dim < 1:
            raise ValueError(f"SGConv2d needs n_scales >= 1 and kernel_dim >= 1; got {n_scales}, {kernel_dim}")
        self.dim, self.kernel_dim, self.n_scales = dim, kernel_dim, n_scales
        self.scale_weights = _decay_weights(n_scales, decay)
        self.kernel_list = nn.ParameterList(nn.Parameter(torch.randn(dim, 1, kernel_dim, kernel_dim))
                                            for _ in range(n_scales))
        self.D = nn.Parameter(torch.randn(dim))
        with torch.no_grad():
            self.register_buffer("kernel_norm", self._raw_kernel().flatten(1).norm(dim=1)[:, None, None])
        self.deployed = False

    @property
    def kernel_size(self) -> int:
        return self.kernel_dim * 2 ** (self.n_scales - 1)

    def _raw_kernel(self) -> torch.Tensor:  # (C, K, K)
        K = self.kernel_size
        total = 0
        for i, (k, s) in enumerate(zip(self.kernel_list, self.scale_weights, strict=False)):
            side = self.kernel_dim * 2 ** i
            up = F.interpolate(k, size=(side, side), mode="bilinear", align_corners=False) if i else k
            lo = (K - side) // 2
            total = total + F.pad(up[:, 0] * s, (lo, K - side - lo, lo, K - side - lo))
        return total

    def kernel(self) -> torch.Tensor:
        """The (C, K, K) kernel; tap (u, v) acts on x[i + u - c, j + v - c] with c = K // 2 (cross-correlation
        with 'same' zero padding: F.conv2d(x, k[:, None], padding=(c, K - 1 - c), groups=C) as asymmetric pad)."""
        if self.deployed:
            return self.kernel_buffer
        return self._raw_kernel() / self.kernel_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        K = self.kernel_size
        c = K // 2
        ct = torch.promote_types(x.dtype, torch.float32)  # FFTs in fp32 at least (bf16 has no FFT)
        k = self.kernel().to(ct)
        # crop the kernel to what an H x W map can reach (offsets -(H-1)..(H-1)), keeping its centre
        top, left = max(0, c - (H - 1)), max(0, c - (W - 1))
        k = k[:, top:min(K, c + H), left:min(K, c + W)]
        ch, cw = c - top, c - left
        kh, kw = k.shape[-2:]
        fh, fw = H + kh - 1, W + kw - 1  # linear (not circular) convolution size
        # cross-correlation = convolution with the flipped kernel
        k_f = torch.fft.rfft2(k.flip(-2, -1), s=(fh, fw))
        y = torch.fft.irfft2(torch.fft.rfft2(x.to(ct), s=(fh, fw)) * k_f, s=(fh, fw))
        # full convolution index of output (i, j) is (i + kh - 1 - ch, j + kw - 1 - cw)
        oh, ow = kh - 1 - ch, kw - 1 - cw
        y = y[..., oh:oh + H, ow:ow + W]
        return (y + x.to(ct) * self.D.to(ct)[:, None, None]).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.dim}, kernel_dim={self.kernel_dim}, n_scales={self.n_scales}, kernel_size={self.kernel_size}"
