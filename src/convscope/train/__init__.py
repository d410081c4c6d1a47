"""Training: datasets and batch transforms, Mixup/CutMix, the engine, checkpoints, and torchrun DDP."""
from ..models.source import load_model, read_meta, save_model_file
from .checkpoint import CheckpointManager
from .config import TrainConfig, add_train_arguments, config_from_args
from .datasets import ImageFolder, TensorImageDataset, fashion_mnist, synthetic
from .engine import train
from .evaluation import evaluate
from .loaders import Loader
from .mixing import MixupCutMix, cutmix, mixup, smooth_one_hot, soft_target_cross_entropy
from .predict import evaluate_checkpoint, predict_images
from .recipe import ModelEma, WarmupCosine, param_groups
from .summary import TrainResult, summarize
from .transforms import EvalTransform, RandAugmentLite, TrainTransform

__all__ = [
    "CheckpointManager", "EvalTransform", "ImageFolder", "Loader", "MixupCutMix", "ModelEma", "RandAugmentLite",
    "TensorImageDataset", "TrainConfig", "TrainResult", "TrainTransform", "WarmupCosine", "add_train_arguments",
    "config_from_args", "cutmix", "evaluate", "evaluate_checkpoint", "fashion_mnist", "load_model", "mixup",
    "param_groups", "predict_images", "read_meta", "save_model_file", "smooth_one_hot", "soft_target_cross_entropy",
    "summarize", "synthetic", "train",
]
