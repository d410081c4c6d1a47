"""Deformable convolution v1 / v2 in plain PyTorch (Dai et al., "Deformable Convolutional Networks", ICCV 2017,
arXiv 1703.06211; Zhu et al., "Deformable ConvNets v2: More Deformable, Better Results", CVPR 2019,
arXiv 1811.11168), by bilinear sampling with `F.grid_sample` (no custom kernels), plus the hardware-friendly
restrictions used to make it cheap.

For output position p0 and kernel tap k (at grid offset p_k = (k_r * dilation, k_c * dilation)):

    y(p0) = sum_k w_k * m_k(p0) * x(p0 * stride - padding + p_k + dp_k(p0))

x(.) is bilinear interpolation with zeros outside the map (as torchvision.ops.deform_conv2d), dp_k the learned
offsets (v1), m_k in [0, 1] the modulation masks (v2; none in v1). `deform_conv2d(x, offset, weight, ...)` is the
functional form with torchvision's layout: offset (B, 2*G*K, Ho, Wo) as (dy, dx) pairs per tap, mask
(B, G*K, Ho, Wo), G offset groups splitting the input channels. With zero offsets and unit masks it is exactly
nn.Conv2d (any stride, padding, dilation, groups).

`DeformConv2d` predicts offsets (and masks, `modulated=True` for v2) from the input with a zero-initialised
conv, as both papers do. Hardware-friendly variants (each a flag, combinable):
- depthwise: `groups=channels` (one filter per channel; set `offset_groups` as wanted);
- fixed shape: `offset_mode="shared"` predicts ONE offset per tap shared by all output positions of an image
  (a learned kernel shape per image: global-pooled prediction), and `offset_mode="static"` learns one input-
  independent kernel shape (a parameter), which makes the sampling pattern fixed: it can be precomputed like a
  dilated/irregular conv;
- limited range: `max_offset=r` bounds every offset to [-r, r] (r * tanh(.), smooth), so the sampled window is
  known in advance (a (k + 2r) halo) and tiles can be fetched without gather over the whole map.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .init import conv_default_init_


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _out_size(n: int, k: int, s: int, p: int, d: int) -> int:
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def deform_conv2d(x: torch.Tensor, offset: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
                  dilation: int | tuple[int, int] = 1, groups: int = 1, mask: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """Deformable convolution (torchvision.ops.deform_conv2d semantics and layouts) by bilinear grid_sample.

    x (B, C, H, W); weight (O, C/groups, kh, kw); offset (B, 2*G*kh*kw, Ho, Wo) with (dy, dx) per tap, G the
    offset groups (C divisible by G); mask (B, G*kh*kw, Ho, Wo) or None (v1)."""
    B, C, H, W = x.shape
    out_ch, _, kh, kw = weight.shape
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    Ho, Wo = _out_size(H, kh, sh, ph, dh), _out_size(W, kw, sw, pw, dw)
    K = kh * kw
    G = offset.shape[1] // (2 * K)
    if offset.shape != (B, 2 * G * K, Ho, Wo) or G < 1 or C % G:
        raise ValueError(f"offset must be (B, 2*G*{K}, {Ho}, {Wo}) with G dividing {C} channels; "
                         f"got {tuple(offset.shape)}")
    dt = x.dtype
    off = offset.view(B, G, K, 2, Ho, Wo).float()
    # base sampling positions: (K, Ho, Wo) rows / columns
    ki = torch.arange(kh, device=x.device).repeat_interleave(kw) * dh
    kj = torch.arange(kw, device=x.device).repeat(kh) * dw
    oi = torch.arange(Ho, device=x.device) * sh - ph
    oj = torch.arange(Wo, device=x.device) * sw - pw
    py = (ki[:, None, None] + oi[None, :, None]).float() + off[:, :, :, 0]  # (B, G, K, Ho, Wo)
    px = (kj[:, None, None] + oj[None, None, :]).float() + off[:, :, :, 1]
    # grid_sample (align_corners=False) puts pixel centre n at (2n + 1) / size - 1; zeros outside
    grid = torch.stack(((2 * px + 1) / W - 1, (2 * py + 1) / H - 1), dim=-1)  # (B, G, K, Ho, Wo, 2)
    grid = grid.view(B * G, K * Ho, Wo, 2).to(dt)
    cols = F.grid_sample(x.reshape(B * G, C // G, H, W), grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False)  # (B*G, C/G, K*Ho, Wo)
    cols = cols.view(B, G, C // G, K, Ho, Wo)
    if mask is not None:
        cols = cols * mask.view(B, G, 1, K, Ho, Wo).to(dt)
    cols = cols.reshape(B, groups, (C // groups) * K, Ho * Wo)
    w = weight.to(dt).reshape(groups, out_ch // groups, (C // groups) * K)
    out = torch.matmul(w, cols).reshape(B, out_ch, Ho, Wo)  # (B, g, O/g, L)
    return out if bias is None else out + bias.to(dt)[:, None, None]


class DeformConv2d(nn.Module):
    """Deformable convolution with its own offset (and mask) predictor.

    modulated: v2 (sigmoid masks, initialised to 0.5 as the paper's zero-init conv gives) instead of v1;
    offset_groups: G, offsets shared by C/G channels each; offset_mode: "dense" (a conv predicts offsets per
    output position: the papers), "shared" (one offset set per image, from global pooling: fixed shape per
    image) or "static" (learned, input-independent offsets: a fixed deformed kernel shape);
    max_offset: bound offsets to [-max_offset, max_offset] (limited range) or None.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int] = 3,
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] | None = None,
                 dilation: int | tuple[int, int] = 1, groups: int = 1, bias: bool = True, modulated: bool = False,
                 offset_groups: int = 1, offset_mode: str = "dense", max_offset: float | None = None) -> None:
        super().__init__()
        if offset_mode not in ("dense", "shared", "static"):
            raise ValueError(f"offset_mode must be 'dense', 'shared' or 'static'; got {offset_mode!r}")
        if in_channels % groups or out_channels % groups or in_channels % offset_groups:
            raise ValueError(f"channels ({in_channels} -> {out_channels}) must be divisible by groups ({groups}) "
                             f"and in_channels by offset_groups ({offset_groups})")
        if max_offset is not None and max_offset <= 0:
            raise ValueError(f"max_offset must be > 0 or None; got {max_offset}")
        self.kernel_size, self.stride, self.dilation = _pair(kernel_size), _pair(stride), _pair(dilation)
        kh, kw = self.kernel_size
        self.padding = ((self.dilation[0] * (kh - 1)) // 2, (self.dilation[1] * (kw - 1)) // 2) \
            if padding is None else _pair(padding)
        self.groups, self.offset_groups, self.modulated = groups, offset_groups, modulated
        self.offset_mode, self.max_offset = offset_mode, max_offset
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, kh, kw))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        K = kh * kw
        n_pred = offset_groups * K * (3 if modulated else 2)
        self.n_offsets = 2 * offset_groups * K
        if offset_mode == "static":
            self.offset = nn.Parameter(torch.zeros(1, n_pred, 1, 1))
        elif offset_mode == "shared":
            self.offset = nn.Linear(in_channels, n_pred)
        else:
            self.offset = nn.Conv2d(in_channels, n_pred, self.kernel_size, self.stride, self.padding,
                                    self.dilation)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        conv_default_init_(self.weight, self.bias)
        if isinstance(self.offset, nn.Parameter):
            nn.init.zeros_(self.offset)
        else:  # zero offsets, masks sigmoid(0) = 0.5 at the start
            nn.init.zeros_(self.offset.weight)
            nn.init.zeros_(self.offset.bias)

    def offsets_and_mask(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, _, H, W = x.shape
        Ho = _out_size(H, self.kernel_size[0], self.stride[0], self.padding[0], self.dilation[0])
        Wo = _out_size(W, self.kernel_size[1], self.stride[1], self.padding[1], self.dilation[1])
        if self.offset_mode == "static":
            pred = self.offset.to(x.dtype).expand(B, -1, Ho, Wo)
        elif self.offset_mode == "shared":
            pred = self.offset(x.mean((2, 3)))[:, :, None, None].expand(-1, -1, Ho, Wo)
        else:
            pred = self.offset(x)
        off = pred[:, :self.n_offsets]
        if self.max_offset is not None:
            off = self.max_offset * torch.tanh(off / self.max_offset)
        mask = pred[:, self.n_offsets:].sigmoid() if self.modulated else None
        return off, mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        off, mask = self.offsets_and_mask(x)
        return deform_conv2d(x, off, self.weight, self.bias, self.stride, self.padding, self.dilation,
                             self.groups, mask)

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[1] * self.groups}, {self.weight.shape[0]}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
                f"modulated={self.modulated}, offset_groups={self.offset_groups}, "
                f"offset_mode={self.offset_mode!r}, max_offset={self.max_offset}")
