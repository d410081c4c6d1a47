"""Transfer arithmetic: where a model's input convolutions and classifier are, and how pretrained weights are adapted
to another number of input channels (timm's `adapt_input_conv` arithmetic)."""
from __future__ import annotations

import functools
import math

import torch
from torch import nn


def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """An input convolution's weight (out, in, kh, kw) for `in_chans` input channels.

    One channel: the filters summed over the input channels (a grey image x gives what the original gives on x
    repeated in every channel); when the weight has a multiple of 3 channels, each group of three is summed. More
    channels: the RGB filters repeated and cut to `in_chans`, scaled by 3 / in_chans (for a multiple of 3
    channels, an image with all channels equal gives the same output as before). ValueError for any other change.
    """
    if weight.dim() != 4:
        raise ValueError(f"an input convolution weight has 4 dimensions; got shape {tuple(weight.shape)}")
    out, have, kh, kw = weight.shape
    if in_chans == have:
        return weight
    dtype = weight.dtype
    w = weight.float()
    if in_chans == 1 and have > 3 and have % 3 == 0:
        w = w.reshape(out, have // 3, 3, kh, kw).sum(dim=2)
    elif in_chans == 1:
        w = w.sum(dim=1, keepdim=True)
    elif have == 3:
        w = w.repeat(1, math.ceil(in_chans / 3), 1, 1)[:, :in_chans] * (3 / in_chans)
    else:
        raise ValueError(f"cannot adapt an input convolution with {have} channels to {in_chans}; expected weights "
                         "with 3 input channels (or 1 channel wanted)")
    return w.to(dtype)


def classifier_names(model: nn.Module, num_classes: int) -> list[str]:
    """Names of the Linear layers that give class scores (`num_classes` outputs: the head, VOLO's aux_head, ...)."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]


def _input_conv_names(model: nn.Module, in_chans: int) -> list[str]:
    """Names of the dense convolutions that read the input image (`in_chans` input channels, one group)."""
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and m.in_channels == in_chans and m.groups == 1]


@functools.cache
def transfer_layers(name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(first_conv, classifier) of a registered variant, as timm's pretrained_cfg names them: the module names of
    its input convolutions and of the Linear layers that give class scores. Found on a meta-device build with 3 input
    channels and 1000 classes."""
    from .. import create_model

    with torch.device("meta"):
        model = create_model(name, num_classes=1000, in_chans=3)
    return tuple(_input_conv_names(model, 3)), tuple(classifier_names(model, 1000))


def pretrained_cfg_layers(name: str) -> dict[str, str | tuple[str, ...] | None]:
    """`first_conv` and `classifier` for a variant's pretrained_cfg (a single name as a string, several as a tuple,
    as timm writes them)."""
    convs, heads = transfer_layers(name)

    def one(names: tuple[str, ...]) -> str | tuple[str, ...] | None:
        return None if not names else names[0] if len(names) == 1 else names

    return {"first_conv": one(convs), "classifier": one(heads)}
