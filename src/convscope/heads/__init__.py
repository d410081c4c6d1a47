"""Semantic segmentation over every zoo backbone: decode heads (FCN, semantic FPN, UPerNet, DeepLabV3+, OCR),
the SEPC neck, output stride by dilation for the pure-conv families, and `create_segmenter`; super-resolution models
by name (`create_sr_model`: ESPCN, a large-kernel SR network); SparK and PixPro, for learning without labels."""
from .deeplab import DeepLabV3PlusHead, aspp_rates
from .dilation import DILATABLE, OUTPUT_STRIDES, StrideFreeConv2d, dilate_backbone_
from .fcn import FCNHead
from .fpn import FPN, SemanticFPNHead
from .ocr import OCRHead
from .pixpro import PixPro
from .segmenter import HEADS, NECKS, Segmenter, create_segmenter
from .sepc import SEPCNeck
from .spark import SparK, spark_families, spark_smallest, sparsify
from .sr import SR_MODELS, SR_SCALES, LargeKernelSR, create_sr_model
from .uper import PPM, UPerHead

__all__ = ["DILATABLE", "FPN", "HEADS", "NECKS", "OUTPUT_STRIDES", "PPM", "SR_MODELS", "SR_SCALES", "DeepLabV3PlusHead",
           "FCNHead", "LargeKernelSR", "OCRHead", "PixPro", "SEPCNeck", "Segmenter", "SemanticFPNHead", "SparK",
           "StrideFreeConv2d", "UPerHead", "aspp_rates", "create_segmenter", "create_sr_model", "dilate_backbone_",
           "spark_families", "spark_smallest", "sparsify"]
