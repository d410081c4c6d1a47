"""The operator library: convolution operators of the seed papers, one small documented module per operator (or
small group), each pinned by an identity test in tests/ops/. docs/operators.md lists them all (kept complete by
tests/ops/test_operator_docs.py). Operators whose kernels are generated (TVConv, SGConv, DCLS) can precompute
them for inference through the deploy transform "materialize" (convscope.deploy.materialize).
"""
from .atrous import ASPP, ASPPPooling, AtrousConv2d
from .conv_glu import ConvGLU
from .coordconv import AddCoords, CoordConv2d, coordinate_channels
from .dcls import Dcls2d
from .deform_conv import DeformConv2d, deform_conv2d
from .factorized import Conv2Plus1d, SeparableConv3d, SeparableConv4d, conv4d, separable_full_kernel
from .lowrank import OneWayConv2d
from .orthogonal import conv_orthogonality, orthogonality_penalty
from .phm import PHMConv2d
from .scnn import SpatialMessagePassing
from .sepc import IntegratedBatchNorm, PyramidConv
from .sgconv import SGConv1d, SGConv2d
from .subpixel import ESPCN, SubPixelConv2d
from .tvconv import TVConv
from .wavelet import HaarDWT2d, HaarIDWT2d, haar_dwt2d, haar_idwt2d
from .weighted_conv import WeightedConv2d, density_profile

__all__ = [
    "ASPP", "ASPPPooling", "AddCoords", "AtrousConv2d", "Conv2Plus1d", "ConvGLU", "CoordConv2d", "Dcls2d",
    "DeformConv2d", "ESPCN", "HaarDWT2d", "HaarIDWT2d", "IntegratedBatchNorm", "OneWayConv2d", "PHMConv2d",
    "PyramidConv", "SGConv1d", "SGConv2d", "SeparableConv3d", "SeparableConv4d", "SpatialMessagePassing",
    "SubPixelConv2d", "TVConv", "WeightedConv2d", "conv4d", "conv_orthogonality", "coordinate_channels",
    "deform_conv2d", "density_profile", "haar_dwt2d", "haar_idwt2d", "orthogonality_penalty",
    "separable_full_kernel",
]
