"""Training: the engine, checkpoints, evaluation and prediction, torchrun DDP (its data: `convscope.data`)."""
from ..models.source import load_model, read_meta, save_model_file
from .checkpoint import CheckpointManager
from .config import TrainConfig
from .engine import train
from .evaluation import evaluate
from .predict import evaluate_checkpoint, evaluate_foreign, predict_images
from .recipe import ModelEma, WarmupCosine, param_groups
from .summary import TrainResult, summarize

__all__ = [
    "CheckpointManager", "ModelEma", "TrainConfig", "TrainResult", "WarmupCosine", "evaluate", "evaluate_checkpoint",
    "evaluate_foreign",
    "load_model", "param_groups", "predict_images", "read_meta", "save_model_file", "summarize", "train",
]
