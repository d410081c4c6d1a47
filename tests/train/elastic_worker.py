"""Run by torchrun in tests/train/test_multinode.py: ddp_worker's run, with two test hooks set by environment
variables (test code only; the library has none):

- TEST_KILL_AT_STEP=S: on torchrun's first attempt (TORCHELASTIC_RESTART_COUNT 0) the highest rank kills itself
  with SIGKILL when the checkpoint of step S is due, before taking part in it. The checkpoint before it is then
  complete on disk: rank 0 wrote it before the gradient all-reduce of the next step, which this rank joined.
- TEST_SEEN_DIR=D: every training batch this rank loads is appended to D/rank<r>.jsonl as
  {"epoch", "step", "indices"} (the loader runs in this process: workers 0).
"""
import json
import os
import signal
import sys
from pathlib import Path

import convscope.train.callbacks as callbacks
from convscope.data.loaders import BatchedDataset
from convscope.data.transforms import TrainTransform
from convscope.models.weights import save_weights
from convscope.train import TrainConfig, train


def kill_at(step: int) -> None:
    real = callbacks.save_checkpoint

    def save(loop, *args, **kwargs):
        if loop.global_step == step and loop.dist.rank == loop.dist.world_size - 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(loop, *args, **kwargs)

    callbacks.save_checkpoint = save


def record_batches(directory: Path) -> None:
    real = BatchedDataset.__getitem__
    directory.mkdir(parents=True, exist_ok=True)

    def getitem(self, req):
        if isinstance(self.transform, TrainTransform):   # not the evaluation loader
            with open(directory / f"rank{self.rank}.jsonl", "a") as f:
                f.write(json.dumps(dict(epoch=req.epoch, step=req.step, indices=list(req.indices))) + "\n")
        return real(self, req)

    BatchedDataset.__getitem__ = getitem


if __name__ == "__main__":
    cfg = TrainConfig.from_dict(json.loads(sys.argv[1]))
    if "TEST_KILL_AT_STEP" in os.environ and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
        kill_at(int(os.environ["TEST_KILL_AT_STEP"]))
    if "TEST_SEEN_DIR" in os.environ:
        record_batches(Path(os.environ["TEST_SEEN_DIR"]))
    result = train(cfg)
    save_weights(result.model, os.path.join(cfg.out, f"rank{result.rank}.safetensors"))
