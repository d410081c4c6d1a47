"""Semantic segmentation over every zoo backbone: decode heads (FCN, semantic FPN, UPerNet, DeepLabV3+, OCR),
the SEPC neck, output stride by dilation for the pure-conv families, and `create_segmenter`."""
from .deeplab import DeepLabV3PlusHead, aspp_rates
from .dilation import DILATABLE, OUTPUT_STRIDES, StrideFreeConv2d, dilate_backbone_
from .fcn import FCNHead
from .fpn import FPN, SemanticFPNHead
from .ocr import OCRHead
from .segmenter import HEADS, NECKS, Segmenter, create_segmenter
from .sepc import SEPCNeck
from .uper import PPM, UPerHead

__all__ = ["DILATABLE", "FPN", "HEADS", "NECKS", "OUTPUT_STRIDES", "PPM", "DeepLabV3PlusHead", "FCNHead", "OCRHead",
           "SEPCNeck", "Segmenter", "SemanticFPNHead", "StrideFreeConv2d", "UPerHead", "aspp_rates",
           "create_segmenter", "dilate_backbone_"]
