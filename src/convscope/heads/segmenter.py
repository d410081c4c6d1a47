"""A segmenter: a zoo backbone's stage maps (features_only), an optional neck, a decode head, and logits
upsampled (bilinear) to the input resolution. `create_segmenter` builds one from names."""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn import functional as F

from ..models import FeatureExtractor, create_model, model_card
from .common import SegHead, resize
from .deeplab import DeepLabV3PlusHead
from .dilation import OUTPUT_STRIDES, dilate_backbone_
from .fcn import FCNHead
from .fpn import SemanticFPNHead
from .ocr import OCRHead
from .sepc import SEPCNeck
from .uper import UPerHead

#: Decode heads by name.
HEADS: Mapping[str, type[SegHead]] = {"fcn": FCNHead, "fpn": SemanticFPNHead, "upernet": UPerHead,
                                      "deeplabv3plus": DeepLabV3PlusHead, "ocr": OCRHead}
#: Necks (between backbone and head) by name.
NECKS: Mapping[str, type[nn.Module]] = {"sepc": SEPCNeck}


class Segmenter(nn.Module):
    """backbone (features_only) -> [neck] -> head -> logits (B, num_classes, H, W) at the input size.

    With a neck that needs it (`size_divisor` > 1) the input is zero-padded at the bottom and right to a multiple
    of `size_divisor` and the logits are cropped back. `forward_train` also returns the head's auxiliary logits
    (OCR's soft object regions; None for the other heads), upsampled the same way, for an auxiliary loss.
    """

    def __init__(self, backbone: FeatureExtractor, head: SegHead, neck: nn.Module | None = None,
                 size_divisor: int = 1, model_name: str = "segmenter") -> None:
        super().__init__()
        self.backbone = backbone
        self.neck = neck if neck is not None else nn.Identity()
        self.head = head
        self.size_divisor = size_divisor
        self.model_name = model_name
        self.num_classes = head.num_classes
        self.in_chans = backbone.in_chans
        self.feature_info = backbone.feature_info

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the backbone's block activations in the backward pass instead of storing them."""
        self.backbone.set_grad_checkpointing(enable)

    def forward_train(self, x: torch.Tensor) -> dict[str, torch.Tensor | None]:
        """{"logits": (B, K, H, W), "aux": (B, K, H, W) or None}."""
        h, w = x.shape[-2:]
        d = self.size_divisor
        if d > 1 and (h % d or w % d):
            x = F.pad(x, (0, -w % d, 0, -h % d))
        out = self.head(self.neck(self.backbone(x)))
        logits, aux = out if isinstance(out, tuple) else (out, None)

        def full(t: torch.Tensor) -> torch.Tensor:
            return resize(t, x.shape[-2:])[..., :h, :w]

        return {"logits": full(logits), "aux": None if aux is None else full(aux)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_train(x)["logits"]


def _check_options(head: str, num_classes: int, neck: str | None, output_stride: int | None) -> None:
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; choose one of {', '.join(HEADS)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer; got {num_classes!r}")
    if neck is not None and neck not in NECKS:
        raise ValueError(f"unknown neck {neck!r}; choose one of {', '.join(NECKS)} or None")
    if output_stride is not None and output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES} or None; got {output_stride!r}")
    if neck == "sepc" and output_stride is not None:
        raise ValueError("the SEPC neck needs strides that double level to level, which output_stride removes: "
                         "give one or the other")


def _feature_backbone(backbone: str | nn.Module, backbone_kwargs: dict) -> tuple[FeatureExtractor, str | None]:
    """The features_only backbone and its family (None when the module carries no model card)."""
    if isinstance(backbone, str):
        return create_model(backbone, features_only=True, **backbone_kwargs), model_card(backbone).family
    if not isinstance(backbone, nn.Module):
        raise TypeError(f"backbone must be a model name or an nn.Module; got {type(backbone).__name__}")
    if backbone_kwargs:
        raise TypeError(f"backbone options {sorted(backbone_kwargs)} apply only to a backbone given by name")
    if not isinstance(backbone, FeatureExtractor):
        if not hasattr(backbone, "forward_intermediates"):
            raise TypeError(f"backbone {type(backbone).__name__} has no forward_intermediates: give a zoo model, "
                            f"its features_only form, or a name")
        backbone = FeatureExtractor(backbone)
    card = backbone.card
    return backbone, None if card is None else card.family


def create_segmenter(backbone: str | nn.Module, head: str, num_classes: int, *, neck: str | None = None,
                     output_stride: int | None = None, channels: int = 256, **backbone_kwargs) -> Segmenter:
    """A segmenter: `backbone` (a zoo name, built with features_only=True and `backbone_kwargs`, or a zoo model /
    its features_only form, which it takes over), a decode head from `HEADS` of width `channels`, an optional neck
    from `NECKS`, and `output_stride` 8 or 16 for the pure-conv families (strides turned into dilations;
    see `convscope.heads.dilation`). Its forward returns (B, num_classes, H, W) logits at the input size."""
    _check_options(head, num_classes, neck, output_stride)
    extractor, family = _feature_backbone(backbone, backbone_kwargs)
    reductions = extractor.feature_info.reduction()
    if output_stride is not None:
        reductions = dilate_backbone_(extractor, output_stride, family or type(extractor.model).__name__)
    in_channels = extractor.feature_info.channels()
    neck_module, size_divisor = None, 1
    if neck is not None:
        neck_module = NECKS[neck](in_channels, reductions, channels)
        in_channels, size_divisor = neck_module.out_channels, neck_module.size_divisor
    head_module = HEADS[head](in_channels, reductions, num_classes, channels=channels)
    name = f"{head}_{extractor.model_name}" + (f"_{neck}" if neck else "")
    return Segmenter(extractor, head_module, neck_module, size_divisor, model_name=name)
