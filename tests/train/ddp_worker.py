"""Run by torchrun in tests/train/test_distributed.py: train with the JSON config in argv[1], then save this
rank's replica of the weights as rank<r>.safetensors in the run directory."""
import json
import os
import sys

from convscope.models.weights import save_weights
from convscope.train import TrainConfig, train

if __name__ == "__main__":
    cfg = TrainConfig.from_dict(json.loads(sys.argv[1]))
    result = train(cfg)
    save_weights(result.model, os.path.join(cfg.out, f"rank{result.rank}.safetensors"))
