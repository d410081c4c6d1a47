"""Spatial token mixers, one per file, each usable on its own or as the `token_mixer` of a MetaFormer block.

Every mixer is built as `Mixer(dim, **options)` and maps a tensor to one of the same shape. Mixers with
`channels_last = False` take NCHW maps; those with `channels_last = True` take (B, N, C) token sequences.
`MIXERS` names them for the pluggable MetaFormer skeleton (`create_model("metaformer_s12", token_mixer=...)`).
"""
from torch import nn

from .aggregated_attention import AggregatedAttention
from .attention import Attention
from .dilated_reparam import DilatedReparamBlock
from .global_filter import GlobalLocalFilter
from .gnconv import GnConv
from .inception_dw import InceptionDWConv2d
from .length_scaled_attention import LengthScaledAttention
from .manhattan_attention import ManhattanRelPos, ManhattanSelfAttention
from .pooling import Pooling
from .random_mixing import RandomMixing
from .replk_conv import ReparamLargeKernelConv
from .sepconv import SepConv


class IdentityMixer(nn.Identity):
    """No token mixing at all (IdentityFormer): the block reduces to norm + channel MLP."""

    channels_last = False

    def __init__(self, dim: int | None = None) -> None:
        super().__init__()


MIXERS: dict[str, type[nn.Module]] = {
    "identity": IdentityMixer,
    "pooling": Pooling,
    "random": RandomMixing,
    "sepconv": SepConv,
    "attention": Attention,
    "inception_dw": InceptionDWConv2d,
    "gnconv": GnConv,
    "global_local_filter": GlobalLocalFilter,
    "replk": ReparamLargeKernelConv,
    "dilated_reparam": DilatedReparamBlock,
}


def get_mixer(name_or_cls: str | type[nn.Module]) -> type[nn.Module]:
    """Look up a mixer class by name (see `MIXERS`); classes pass through."""
    if not isinstance(name_or_cls, str):
        return name_or_cls
    try:
        return MIXERS[name_or_cls]
    except KeyError:
        raise ValueError(f"unknown token mixer {name_or_cls!r}; expected one of {sorted(MIXERS)}") from None


__all__ = ["AggregatedAttention", "Attention", "DilatedReparamBlock", "GlobalLocalFilter", "GnConv", "IdentityMixer",
           "InceptionDWConv2d", "LengthScaledAttention", "MIXERS", "ManhattanRelPos", "ManhattanSelfAttention",
           "Pooling", "RandomMixing", "ReparamLargeKernelConv", "SepConv", "get_mixer"]
