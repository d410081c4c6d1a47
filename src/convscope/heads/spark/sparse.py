"""Sparse convolution emulated densely, as SparK does (Tian et al., "Designing BERT for Convolutional Networks",
arXiv 2301.03580): one visible/masked map drawn at the deepest stride, upsampled to every map by repeat, and
every operator that could write into a masked position (a conv with a kernel or stride, pooling, a norm whose
statistics span positions, a bias) wrapped so that it reads and writes visible positions only.

`sparsify(model)` swaps those operators IN PLACE by module type; each wrapper keeps the original module as its
`dense` child, so a state-dict key `a.b.weight` becomes `a.b.dense.weight` and `dense_key_map` maps it back.
"""
from __future__ import annotations

import torch
from torch import nn

from ...layers import GlobalResponseNorm, LayerNorm2d, SqueezeExcite
from ...layers.mixers import (
    AggregatedAttention,
    Attention,
    GlobalLocalFilter,
    HaloAttention,
    RandomMixing,
    RelPosWindowAttention,
)

#: operators whose output mixes positions in a way a mask on their input and output cannot make sparse
REFUSED = {
    GlobalLocalFilter: "a global filter multiplies the whole map's FFT spectrum, so every output reads every "
                       "position, masked ones included",
    RandomMixing: "random mixing multiplies the tokens by a dense N x N matrix over all positions",
    Attention: "self-attention weighs every position, masked ones included, through the softmax",
    AggregatedAttention: "aggregated attention pools keys over the whole map",
    HaloAttention: "halo attention weighs every position of a window through the softmax",
    RelPosWindowAttention: "window attention weighs every position of a window through the softmax",
}


class SparseMask:
    """The current forward's visible positions: a bool (B, 1, h, w) map at the deepest stride (True =
    visible), or None for a dense forward. `at(H, W)` gives it upsampled by repeat to an H x W map."""

    def __init__(self) -> None:
        self.active: torch.Tensor | None = None
        self._cache: dict[tuple[int, int], torch.Tensor] = {}

    def set(self, active: torch.Tensor | None) -> None:
        self.active = active
        self._cache = {}

    def at(self, height: int, width: int) -> torch.Tensor | None:
        """The (B, 1, height, width) bool mask, or None when no mask is set."""
        if self.active is None:
            return None
        if (height, width) not in self._cache:
            h, w = self.active.shape[-2:]
            if height % h or width % w:
                raise ValueError(f"a {height}x{width} map is not a whole multiple of the {h}x{w} mask; SparK needs "
                                 f"every map's size to be the input size over a power of two")
            self._cache[(height, width)] = (self.active.repeat_interleave(height // h, dim=2)
                                            .repeat_interleave(width // w, dim=3))
        return self._cache[(height, width)]

    def like(self, x: torch.Tensor, channels_last: bool = False) -> torch.Tensor | None:
        """The mask for a (B, C, H, W) map, or (B, H, W, 1) for a channels-last (B, H, W, C) one."""
        if channels_last:
            m = self.at(x.shape[1], x.shape[2])
            return None if m is None else m.permute(0, 2, 3, 1)
        return self.at(x.shape[-2], x.shape[-1])


class SparseModule(nn.Module):
    """A wrapper around one dense operator (`dense`) reading the shared `SparseMask`."""

    def __init__(self, dense: nn.Module, mask: SparseMask) -> None:
        super().__init__()
        self.dense = dense
        self.mask = mask


class SparseConv(SparseModule):
    """A conv (or a Linear on a channels-last map) on visible positions only: masked inputs are zeroed, so each
    visible output sums over visible neighbours alone, and masked outputs are set to zero."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels_last = isinstance(self.dense, nn.Linear)
        if x.dim() != 4 or self.mask.active is None:
            return self.dense(x)
        y = self.dense(x * self.mask.like(x, channels_last))
        return y * self.mask.like(y, channels_last)


class SparseMaxPool(SparseModule):
    """Max pooling over visible neighbours only (masked inputs count as -inf); masked outputs are zero."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.mask.like(x)
        if m is None:
            return self.dense(x)
        y = self.dense(x.masked_fill(~m, float("-inf")))
        return torch.where(self.mask.like(y), y, torch.zeros((), dtype=y.dtype, device=y.device))


class SparseAvgPool(SparseModule):
    """Average pooling over visible neighbours only: the pooled masked map divided by the pooled mask (the
    divisor, padding counted or not, cancels); masked outputs are zero."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.mask.like(x)
        if m is None:
            return self.dense(x)
        m = m.to(x.dtype)
        y = self.dense(x * m) / self.dense(m).clamp_min(torch.finfo(x.dtype).tiny)
        return y * self.mask.like(y)


class SparseBatchNorm(SparseModule):
    """BatchNorm2d over visible positions only: they are gathered as (N_visible, C), normalised by the original
    module (batch statistics and running-statistics updates over them alone), and scattered back into zeros."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.mask.like(x)
        if m is None:
            return self.dense(x)
        where = m[:, 0].nonzero(as_tuple=True)
        bhwc = x.permute(0, 2, 3, 1)
        visible = self.dense(bhwc[where][:, :, None, None])[:, :, 0, 0]
        return torch.zeros_like(bhwc).index_put(where, visible).permute(0, 3, 1, 2)


class SparseLayerNorm(SparseModule):
    """LayerNorm over the channels of each position (LayerNorm2d on NCHW, nn.LayerNorm on channels-last maps):
    its statistics never span positions, so masking the output (the affine bias) makes it sparse."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or self.mask.active is None:
            return self.dense(x)
        return self.dense(x) * self.mask.like(x, channels_last=not isinstance(self.dense, LayerNorm2d))


class SparseGroupNorm(SparseModule):
    """GroupNorm whose per-sample, per-group mean and variance are over the visible positions only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.mask.like(x)
        if m is None:
            return self.dense(x)
        gn = self.dense
        b, c, h, w = x.shape
        m = m.to(x.dtype)
        xg = (x * m).view(b, gn.num_groups, c // gn.num_groups, h, w)
        mg = m.view(b, 1, 1, h, w)
        count = mg.sum((2, 3, 4), keepdim=True) * (c // gn.num_groups)
        mean = xg.sum((2, 3, 4), keepdim=True) / count
        var = ((xg - mean) * mg).square().sum((2, 3, 4), keepdim=True) / count
        y = ((xg - mean) / torch.sqrt(var + gn.eps)).view(b, c, h, w)
        if gn.weight is not None:
            y = y * gn.weight.view(1, c, 1, 1)
        if gn.bias is not None:
            y = y + gn.bias.view(1, c, 1, 1)
        return y * m


class SparseGRN(SparseModule):
    """Global Response Normalization whose spatial L2 norms are over visible positions (masked inputs zeroed);
    masked outputs (the bias) are zero."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.mask.like(x, channels_last=self.dense.channel_dim == -1)
        if m is None:
            return self.dense(x)
        return self.dense(x * m) * m


class SparseSqueezeExcite(SparseModule):
    """Squeeze-and-Excitation whose squeeze is the mean over visible positions; masked outputs are zero."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.mask.like(x)
        if m is None:
            return self.dense(x)
        se = self.dense
        m = m.to(x.dtype)
        s = (x * m).sum((2, 3), keepdim=True) / m.sum((2, 3), keepdim=True).clamp_min(1)
        return x * se.gate(se.fc2(se.act(se.fc1(s)))) * m


#: module type -> its sparse wrapper, tried in order (LayerNorm2d is an nn.LayerNorm)
WRAPPERS: tuple[tuple[type[nn.Module], type[SparseModule]], ...] = (
    (SqueezeExcite, SparseSqueezeExcite),
    (GlobalResponseNorm, SparseGRN),
    (nn.BatchNorm2d, SparseBatchNorm),
    (nn.GroupNorm, SparseGroupNorm),
    (nn.LayerNorm, SparseLayerNorm),
    (nn.Conv2d, SparseConv),
    (nn.Linear, SparseConv),
    (nn.MaxPool2d, SparseMaxPool),
    (nn.AvgPool2d, SparseAvgPool),
)


def _wrapper_for(module: nn.Module) -> type[SparseModule] | None:
    for kind, wrapper in WRAPPERS:
        if isinstance(module, kind):
            return wrapper
    return None


def sparsify(model: nn.Module, mask: SparseMask | None = None) -> SparseMask:
    """Swap, in place, every operator of `model` that could fill masked positions for its sparse wrapper (see
    `WRAPPERS`), all reading one `SparseMask`, which is returned: set its `active` map before a forward.

    Raises ValueError naming the operator and why when `model` holds one that a mask cannot make sparse
    (`REFUSED`: attention, global filters, ...); nothing is swapped then."""
    for name, module in model.named_modules():
        for kind, reason in REFUSED.items():
            if isinstance(module, kind):
                raise ValueError(f"SparK cannot make {name or 'the model'} ({kind.__name__}) sparse: {reason}")
    mask = mask if mask is not None else SparseMask()
    _swap(model, mask)
    return mask


def _swap(parent: nn.Module, mask: SparseMask) -> None:
    for name, child in parent.named_children():
        if isinstance(child, SparseModule):
            continue
        wrapper = _wrapper_for(child)
        if wrapper is None:
            _swap(child, mask)
        else:
            setattr(parent, name, wrapper(child, mask))


def dense_key_map(model: nn.Module) -> dict[str, str]:
    """Each state-dict key of a sparsified `model` -> the key the same tensor has in the dense model (the
    wrappers' `.dense` step dropped)."""
    wrapped = {name for name, module in model.named_modules() if isinstance(module, SparseModule)}
    out = {}
    for key in model.state_dict():
        parts = key.split(".")
        kept = [p for i, p in enumerate(parts) if not (p == "dense" and ".".join(parts[:i]) in wrapped)]
        out[key] = ".".join(kept)
    return out

