"""Spatial token mixers, one per file, each usable on its own or as the `token_mixer` of a MetaFormer block.

Every mixer is built as `Mixer(dim, **options)` and maps a tensor to one of the same shape. Mixers with
`channels_last = False` take NCHW maps; those with `channels_last = True` take (B, N, C) token sequences.
`MIXERS` names them for the pluggable MetaFormer skeleton (`create_model("metaformer_s12", token_mixer=...)`).
"""
from torch import nn

from ...ops.conv_glu import ConvGLU  # operator-library modules that are also token mixers
from ...ops.scnn import SpatialMessagePassing
from ...ops.sgconv import SGConv2d
from ...ops.tvconv import TVConv
from .aggregated_attention import AggregatedAttention
from .attention import Attention
from .conv_attention import ConvProjectionAttention
from .dcls_mixer import DclsMixer
from .deform_mixer import DeformMixer
from .dilated_reparam import DilatedReparamBlock
from .dwconv import DWConvMixer
from .glmix import GLMix
from .global_filter import GlobalLocalFilter
from .gnconv import GnConv
from .gpsa import GPSA
from .halo_attention import HaloAttention
from .inception_dw import InceptionDWConv2d
from .length_scaled_attention import LengthScaledAttention
from .lsconv import LSConv
from .manhattan_attention import ManhattanRelPos, ManhattanSelfAttention
from .outlook_attention import OutlookAttention
from .partition_attention import PartitionAttention  # NHWC maps: not a MetaFormer mixer, not in MIXERS
from .pooling import Pooling
from .random_mixing import RandomMixing
from .replk_conv import ReparamLargeKernelConv
from .sepconv import SepConv
from .wavemix import WaveBlock
from .window_attention import RelPosWindowAttention


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
    "conv_glu": ConvGLU,
    "glmix": GLMix,
    "lsconv": LSConv,
    "rel_window_attention": RelPosWindowAttention,
    "scnn": SpatialMessagePassing,
    "wavemix": WaveBlock,
    "tvconv": TVConv,  # needs size=(h, w) of the stage's maps
    "dwconv": DWConvMixer,
    "dcls": DclsMixer,
    "deform": DeformMixer,
    "sgconv2d": SGConv2d,
}


def get_mixer(name_or_cls: str | type[nn.Module]) -> type[nn.Module]:
    """Look up a mixer class by name (see `MIXERS`); classes pass through."""
    if not isinstance(name_or_cls, str):
        return name_or_cls
    try:
        return MIXERS[name_or_cls]
    except KeyError:
        raise ValueError(f"unknown token mixer {name_or_cls!r}; expected one of {sorted(MIXERS)}") from None


__all__ = ["AggregatedAttention", "Attention", "ConvGLU", "ConvProjectionAttention", "DclsMixer",
           "DeformMixer", "DilatedReparamBlock", "DWConvMixer", "get_mixer", "GLMix", "GlobalLocalFilter",
           "GnConv", "GPSA", "HaloAttention", "IdentityMixer", "InceptionDWConv2d", "LengthScaledAttention",
           "LSConv", "ManhattanRelPos", "ManhattanSelfAttention", "MIXERS", "OutlookAttention",
           "PartitionAttention", "Pooling", "RandomMixing", "RelPosWindowAttention", "ReparamLargeKernelConv",
           "SepConv", "SGConv2d", "SpatialMessagePassing", "TVConv", "WaveBlock"]
