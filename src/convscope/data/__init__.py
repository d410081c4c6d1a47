"""The data: a `--data` spec opened for a split (`open_dataset`), the datasets, the batch loader, the batch
transforms, Mixup/CutMix, and the model input size a data set is fed at (`decide_input_size`).

Floor 2 of the layering: imports `utils`, `files` and `extras` only, never models, train, deploy or analysis.
"""
from .datasets import (
    FASHION_MNIST_CLASSES,
    ImageFolder,
    IndexSubset,
    TensorImageDataset,
    fashion_mnist,
    load_image,
    synthetic,
)
from .loaders import Loader
from .mixing import MixupCutMix, cutmix, mixup, smooth_one_hot, soft_target_cross_entropy
from .open import DataFacts, OpenedData, SyntheticOptions, open_dataset, probe_data
from .shards import ShardImages, pack_shards, shard_size
from .sizes import decide_input_size
from .transforms import EvalTransform, RandAugmentLite, TrainTransform

__all__ = [
    "FASHION_MNIST_CLASSES", "DataFacts", "EvalTransform", "ImageFolder", "IndexSubset", "Loader", "MixupCutMix",
    "OpenedData", "RandAugmentLite", "ShardImages", "SyntheticOptions", "TensorImageDataset", "TrainTransform",
    "cutmix", "decide_input_size", "fashion_mnist", "load_image", "mixup", "open_dataset", "pack_shards",
    "probe_data", "shard_size", "smooth_one_hot", "soft_target_cross_entropy", "synthetic",
]
