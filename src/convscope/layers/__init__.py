"""Building blocks that know nothing about any model."""
from .activations import SquaredReLU, StarReLU
from .classifier import ClassifierHead
from .conv_bn import ConvBnAct, ParallelConvBn
from .drop import DropPath, drop_path_or_identity
from .grn import GlobalResponseNorm
from .helpers import checkpoint_seq, drop_path_rates, init_trunc_normal, make_divisible, scale_classifier_, to_2tuple
from .layer_scale import LayerScale, layer_scale, layer_scale_parameter
from .mixers import (
    MIXERS,
    Attention,
    DilatedReparamBlock,
    GlobalLocalFilter,
    GnConv,
    IdentityMixer,
    InceptionDWConv2d,
    Pooling,
    RandomMixing,
    RelPosWindowAttention,
    ReparamLargeKernelConv,
    SepConv,
    get_mixer,
)
from .mlp import ConvMlp, GlobalResponseNormMlp, Mlp, MlpHead
from .norm import GroupNorm1, LayerNorm, LayerNorm2d
from .se import SqueezeExcite

__all__ = [
    "Attention", "ClassifierHead", "ConvBnAct", "ConvMlp", "DilatedReparamBlock", "DropPath", "GlobalLocalFilter",
    "GlobalResponseNorm", "GlobalResponseNormMlp", "GnConv", "GroupNorm1", "IdentityMixer", "InceptionDWConv2d",
    "LayerNorm", "LayerNorm2d", "LayerScale", "MIXERS", "Mlp", "MlpHead", "ParallelConvBn", "Pooling", "RandomMixing",
    "RelPosWindowAttention", "ReparamLargeKernelConv", "SepConv", "SqueezeExcite", "SquaredReLU", "StarReLU",
    "checkpoint_seq", "drop_path_or_identity", "drop_path_rates", "get_mixer", "init_trunc_normal", "layer_scale",
    "layer_scale_parameter", "make_divisible",
    "scale_classifier_", "to_2tuple",
]
