"""What a module computes, for grouping a profile's layers: depthwise / pointwise / grouped / dense conv, linear,
norm, activation, pool, identity, a container's own forward (glue), or the class name."""
from __future__ import annotations

from collections.abc import Sequence

from torch import nn

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase, nn.LocalResponseNorm)
_POOLS = (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd,
          nn.modules.pooling._AdaptiveMaxPoolNd)
_NO_WORK = (nn.Identity, nn.Dropout, nn.Flatten)


def layer_kind(module: nn.Module, input_shape: Sequence[int] | None = None, leaf: bool = True) -> str:
    """What a module computes, for grouping: 'depthwise conv', 'pointwise conv' (1x1 conv, or a Linear applied
    at every position of a map or sequence), 'grouped conv', 'conv', 'linear', 'norm', 'activation', 'pool',
    'identity', 'glue' (a container's own forward), or the class name."""
    if not leaf:
        return "glue"
    if isinstance(module, nn.modules.conv._ConvNd):
        if module.groups > 1 and module.groups == module.in_channels:
            return "depthwise conv"
        if module.groups > 1:
            return "grouped conv"
        if all(k == 1 for k in module.kernel_size):
            return "pointwise conv"
        return "conv"
    if isinstance(module, nn.Linear):
        positions = 1
        for s in (input_shape or ())[1:-1]:
            positions *= s
        return "pointwise conv" if input_shape is not None and len(input_shape) >= 3 and positions > 1 else "linear"
    if isinstance(module, _NORMS) or "norm" in type(module).__name__.lower():
        return "norm"
    if module.__class__.__module__ == "torch.nn.modules.activation" or type(module).__name__.endswith(("ReLU", "LU")):
        return "activation"
    if isinstance(module, _POOLS) or "pool" in type(module).__name__.lower():
        return "pool"
    if isinstance(module, _NO_WORK):
        return "identity"
    return type(module).__name__
