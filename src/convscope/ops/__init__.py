"""General convolution operators (each documented with its paper and what it computes, pinned by identity tests
in tests/ops/): translation-variant, structured global, learnable-spacing and deformable convolutions.

`materialize_(model)` / the deploy transform "materialize" precompute generated kernels (TVConv, SGConv,
DCLS). Token-mixer wrappers (dim in, same shape out) for the ones that are not already mixers live in
`convscope.layers.mixers`.
"""
from .dcls import Dcls2d
from .deform_conv import DeformConv2d, deform_conv2d
from .materialize import MATERIALIZE, Materialize, materialize_
from .sgconv import SGConv1d, SGConv2d
from .tvconv import TVConv

__all__ = ["Dcls2d", "DeformConv2d", "MATERIALIZE", "Materialize", "SGConv1d", "SGConv2d", "TVConv", "deform_conv2d",
           "materialize_"]
