"""Self-supervised pre-training (`convscope pretrain`, train/pretraining.py): RotNet's rotated batches and labels,
the SparK task with a stand-in for convscope.heads.spark.SparK (same interface), resume bit for bit, the encoder
file that `convscope train --init-from` fine-tunes, the figures, and --ignore-labels on a flat folder."""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from convscope.models import create_model
from convscope.models.pretrained.adapt import transfer_layers
from convscope.train import TrainConfig, train
from convscope.train.pretraining import RotationTransform, rotate_batch, rotation_labels

from ..conftest import run_cli

TINY = {"depths": [1, 1, 1, 1], "dims": [8, 16, 24, 32]}
COMMON = ["--model", "convnext_atto", "--model-kwargs", json.dumps(TINY), "--threads", "1", "--device", "cpu",
          "--progress", "plain"]


def _bytes(path: Path) -> dict[str, bytes]:
    return {k: v.numpy().tobytes() for k, v in load_file(str(path)).items()}


# -- RotNet's batches ---------------------------------------------------------------------------------------------
def test_rotate_batch_is_rotation_major_and_crops_to_squares():
    x = torch.arange(2 * 1 * 3 * 4, dtype=torch.uint8).view(2, 1, 3, 4)
    r = rotate_batch(x)
    assert r.shape == (8, 1, 3, 3)
    sq = x[..., :, 0:3]   # the centre 3x3 of a 3x4 image: columns 0-2 ((4 - 3) // 2 = 0)
    assert torch.equal(r[0:2], sq)
    assert torch.equal(r[2:4, 0, 0, :], sq[:, 0, :, 2])              # 90 counter-clockwise: row 0 = last column
    assert torch.equal(r[4:6], sq.flip(-1).flip(-2))                   # 180 degrees
    assert torch.equal(r[6:8, 0, 0, :], sq[:, 0, :, 0].flip(-1))       # 270: row 0 = first column, bottom up
    assert rotation_labels(8).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_rotation_transform_flips_before_rotating():
    """A flip drawn for an image applies to all 4 of its rotations as the flip of the upright image: the 90-degree
    copy of a flipped image is rot90(flip(x)), never flip(rot90(x)) (which would look like a 270)."""
    x = torch.randint(0, 255, (6, 1, 5, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = RotationTransform(lambda y, g: y, hflip=1.0)(x, torch.Generator().manual_seed(1))
    assert torch.equal(out[6:12], torch.rot90(x.flip(-1), 1, (-2, -1)))
    assert not torch.equal(out[6:12], torch.rot90(x, 1, (-2, -1)).flip(-1))


# -- the SparK stand-in -------------------------------------------------------------------------------------------
class StandInSparK(nn.Module):
    """The interface of convscope.heads.spark.SparK on a zoo model: the encoder's deepest map, a 1x1 conv and a
    pixel shuffle back to the image; the squared error on the masked pixels."""

    def __init__(self, model_name: str, in_chans: int = 3, input_size=(32, 32), mask_ratio: float = 0.6,
                 **model_kwargs) -> None:
        super().__init__()
        self.encoder = create_model(model_name, in_chans=in_chans, **model_kwargs)
        self.model_name, self.mask_ratio, self.downsample_ratio = model_name, mask_ratio, 32
        self.input_size = tuple(input_size)
        self.decoder = nn.Conv2d(self.encoder.num_features, in_chans * 32 * 32, 1)

    def random_active(self, batch: int, generator=None, device=None) -> torch.Tensor:
        h, w = (s // self.downsample_ratio for s in self.input_size)
        return (torch.rand(batch, 1, h, w, generator=generator) >= self.mask_ratio).to(device)

    def _visible(self, active: torch.Tensor) -> torch.Tensor:
        return active.repeat_interleave(32, 2).repeat_interleave(32, 3)

    def reconstruct(self, images: torch.Tensor, active: torch.Tensor):
        visible = self._visible(active)
        masked = images * visible
        pred = F.pixel_shuffle(self.decoder(self.encoder.forward_features(masked)), 32)
        return masked, pred, visible

    def forward(self, images: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
        active = self.random_active(images.shape[0], device=images.device) if active is None else active
        _, pred, visible = self.reconstruct(images, active)
        hidden = ~visible
        return ((pred - images) ** 2 * hidden).sum() / hidden.sum().clamp(min=1) / images.shape[1]

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        heads = set(transfer_layers(self.model_name)[1])
        return {k: v for k, v in self.encoder.state_dict().items() if k.rpartition(".")[0] not in heads}


@pytest.fixture
def stand_in_spark(monkeypatch):
    module = types.ModuleType("convscope.heads.spark")
    module.SparK = StandInSparK
    monkeypatch.setitem(sys.modules, "convscope.heads.spark", module)


def _spark_config(out: Path, **kw) -> TrainConfig:
    d = dict(model="convnext_atto", model_kwargs=TINY, task="spark", data="synthetic", synthetic_size=32,
             synthetic_image_size=32, epochs=2, batch_size=8, threads=1, device="cpu", quiet=True, seed=3,
             checkpoint_every=2, keep_last=10, out=str(out))
    return TrainConfig(**dict(d, **kw))


def _resume_from_step_2_ends_the_same(out: Path, cfg: dict) -> None:
    """Delete every checkpoint of the finished run in `out` but the first (step 2), resume it: the final weights
    and encoder file end byte for byte as the uninterrupted run's."""
    ref = {n: _bytes(out / n) for n in ("last.safetensors", "encoder.safetensors")}
    for ck in sorted((out / "checkpoints").iterdir())[1:]:
        for f in ck.iterdir():
            f.unlink()
        ck.rmdir()
    again = train(_spark_config(out, resume=True, **cfg))
    assert again.resumed_from == 2
    for n, tensors in ref.items():
        assert _bytes(out / n) == tensors, n


def test_spark_task_resumes_bit_exactly_and_writes_its_outputs(tmp_path, stand_in_spark):
    """Run 2 epochs, keep its final weights, go back to the checkpoint of step 2 (mid-epoch 1), resume: the final
    weights, encoder file and history are byte for byte the uninterrupted run's."""
    out = tmp_path / "run"
    first = train(_spark_config(out))
    assert first.final["recon_loss"] > 0 and first.history[-1]["recon_loss"] == first.final["recon_loss"]
    ref = {n: _bytes(out / n) for n in ("last.safetensors", "encoder.safetensors")}
    ref_hist = (out / "metrics.jsonl").read_text()
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["spark_epoch001.png", "spark_epoch002.png"]
    for ck in sorted((out / "checkpoints").iterdir())[1:]:   # keep step 2 of 4 per epoch
        for f in ck.iterdir():
            f.unlink()
        ck.rmdir()
    for n in ("last.safetensors", "best.safetensors", "encoder.safetensors", "metrics.jsonl"):
        (out / n).unlink()
    again = train(_spark_config(out, resume=True))
    assert again.resumed_from == 2
    for n, tensors in ref.items():
        assert _bytes(out / n) == tensors, n
    strip = ("train_img_per_s", "epoch_time_s")
    hist = [[{k: v for k, v in json.loads(line).items() if k not in strip} for line in text.splitlines()]
            for text in (ref_hist, (out / "metrics.jsonl").read_text())]
    assert hist[0] == hist[1]
    enc = load_file(str(out / "encoder.safetensors"))
    model = create_model("convnext_atto", num_classes=10, in_chans=3, **TINY)
    assert set(enc) == {k for k in model.state_dict() if not k.startswith("head.fc.")}


def test_spark_masks_are_a_function_of_the_batch(tmp_path, stand_in_spark):
    """The same held-out batch gets the same mask at every evaluation, whatever the global RNG did in between
    (the masks come from the batch's generator), and different batches get different masks."""
    from convscope.train.callbacks import Evaluation
    from convscope.train.distributed import DistInfo
    from convscope.train.pretraining import build_pretrain_run
    from convscope.train.report import Console

    parts = build_pretrain_run(_spark_config(tmp_path / "x", eval_batch_size=4), DistInfo(), Console("none"))
    evaluation = Evaluation(parts.task, parts.eval_loader, {})
    first = evaluation.evaluate(parts.task.model)
    torch.rand(100)
    assert evaluation.evaluate(parts.task.model) == first
    masks = [parts.task.to_device(b)[1] for b in parts.eval_loader]
    again = [parts.task.to_device(b)[1] for b in parts.eval_loader]
    assert len(masks) == 2 and all(torch.equal(a, b) for a, b in zip(masks, again, strict=True))
    assert not torch.equal(masks[0], masks[1])


def test_spark_refuses_an_input_off_the_stride(tmp_path, stand_in_spark):
    with pytest.raises(ValueError, match="multiples of 32"):
        train(_spark_config(tmp_path / "x", input_size=40))


def test_spark_task_with_the_real_spark_resumes_bit_exactly_and_its_encoder_fine_tunes(tmp_path):
    """The task on convscope.heads.spark.SparK itself (64 x 64: a 2 x 2 deepest map): 2 epochs, resumed from the
    step-2 checkpoint, end byte for byte as the uninterrupted run (the sparse BatchNorms' running statistics and the
    mask tokens included); its encoder file loads into create_model with only the classifier missing."""
    out = tmp_path / "run"
    cfg = dict(synthetic_size=16, synthetic_image_size=64, batch_size=4)
    first = train(_spark_config(out, **cfg))
    assert first.final["recon_loss"] > 0 and torch.isfinite(torch.tensor(first.final["recon_loss"]))
    assert any(".decoder." in k or k.startswith("decoder.") for k in load_file(str(out / "last.safetensors")))
    _resume_from_step_2_ends_the_same(out, cfg)
    model = create_model("convnext_atto", num_classes=10, in_chans=3, **TINY)
    missing, unexpected = model.load_state_dict(load_file(str(out / "encoder.safetensors")), strict=False)
    # the head's norm and classifier: SparK's encoder is the features_only model, which ends before the head
    assert unexpected == [] and sorted(missing) == ["head.fc.bias", "head.fc.weight", "head.norm.bias",
                                                    "head.norm.weight"]
    tuned = train(TrainConfig(model="convnext_atto", model_kwargs=TINY, data="synthetic", synthetic_size=16,
                              synthetic_image_size=64, synthetic_classes=10, epochs=1, batch_size=8, threads=1,
                              device="cpu", quiet=True, init_from=str(out / "encoder.safetensors"),
                              out=str(tmp_path / "ft")))
    assert tuned.final["n"] > 0


def test_pixpro_task_resumes_bit_exactly_and_its_encoder_fine_tunes(tmp_path):
    """`--method pixpro` on convscope.heads.pixpro.PixPro (64 x 64: 2 x 2 cells): 2 epochs, resumed from the step-2
    checkpoint, end byte for byte as the uninterrupted run (the momentum branch and its step count included); the
    held-out views are the same at every evaluation; the encoder file is the online encoder and fine-tunes."""
    from convscope.train.callbacks import Evaluation
    from convscope.train.distributed import DistInfo
    from convscope.train.pretraining import build_pretrain_run
    from convscope.train.report import Console

    out = tmp_path / "run"
    cfg = dict(task="pixpro", synthetic_size=16, synthetic_image_size=64, batch_size=4)
    first = train(_spark_config(out, **cfg))
    assert -4 < first.final["pixpro_loss"] < 0 and json.loads((out / "pixpro.json").read_text())["n"] > 0
    last = load_file(str(out / "last.safetensors"))
    assert int(last["updates"]) == 8 and any(k.startswith("encoder_target.") for k in last)   # 2 epochs x 4 steps
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["pixpro_epoch001.png", "pixpro_epoch002.png"]
    enc = load_file(str(out / "encoder.safetensors"))
    assert all(torch.equal(v, last["encoder." + ("model." if "encoder.model." + k in last else "") + k])
               for k, v in enc.items())   # the online encoder, not the momentum one
    _resume_from_step_2_ends_the_same(out, cfg)
    parts = build_pretrain_run(_spark_config(tmp_path / "x", eval_batch_size=4, **cfg), DistInfo(), Console("none"))
    evaluation = Evaluation(parts.task, parts.eval_loader, {})
    scores = evaluation.evaluate(parts.task.model)
    torch.rand(100)
    assert evaluation.evaluate(parts.task.model) == scores and int(parts.task.model.updates) == 0
    tuned = train(TrainConfig(model="convnext_atto", model_kwargs=TINY, data="synthetic", synthetic_size=16,
                              synthetic_image_size=64, synthetic_classes=10, epochs=1, batch_size=8, threads=1,
                              device="cpu", quiet=True, init_from=str(out / "encoder.safetensors"),
                              out=str(tmp_path / "ft")))
    assert tuned.final["n"] > 0


def test_run_header_counts_trained_parameters_and_names_the_momentum_branch_apart():
    from convscope.heads.pixpro import PixPro
    from convscope.train.distributed import DistInfo
    from convscope.train.summary import describe_run

    model = PixPro("convnext_atto", in_chans=1, proj_dim=16, **TINY)
    trained = sum(p.numel() for p in [*model.encoder.parameters(), *model.projector.parameters(),
                                      *model.propagation.parameters()])
    frozen = sum(p.numel() for p in [*model.encoder_target.parameters(), *model.projector_target.parameters()])
    loop = types.SimpleNamespace(dist=DistInfo(), model=model, steps_per_epoch=4, device="cpu")
    line = describe_run(_spark_config(Path("unused")), "input", "data", loop, "convnext_atto")
    assert line.startswith(f"convnext_atto: {trained / 1e6:.3f} M parameters (and {frozen / 1e6:.3f} M not trained)")


# -- convscope pretrain -> convscope train --init-from --------------------------------------------------------------
def test_pretrain_rotnet_then_finetune_from_its_encoder(tmp_path, monkeypatch):
    """`convscope pretrain --method rotnet` writes encoder.safetensors; `convscope train --init-from` it starts with
    the encoder's weights (the stem's, checked at the start of the loop) and a fresh 10-class classifier."""
    out = tmp_path / "pre"
    r = run_cli("pretrain", "--method", "rotnet", *COMMON, "--data", "synthetic", "--synthetic-size", "32",
                "--epochs", "1", "--batch-size", "8", "--out", str(out), timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "rotation accuracy" in r.stdout and (out / "figures" / "rotnet_epoch001.png").is_file()
    assert json.loads((out / "config.json").read_text())["task"] == "rotnet"
    enc = load_file(str(out / "encoder.safetensors"))
    assert not any(k.startswith("head.fc.") for k in enc) and "stem.0.weight" in enc
    assert load_file(str(out / "last.safetensors"))["head.fc.weight"].shape[0] == 4
    from convscope.train.parts import checkpoint_task  # `convscope eval` of it: one line naming what to do
    with pytest.raises(ValueError, match="pretrain --method rotnet.*--init-from"):
        checkpoint_task(out / "best.safetensors")

    from convscope.train import engine
    seen = {}
    fit = engine.Loop.fit

    def spy(loop):
        seen.update({k: v.clone() for k, v in loop.model.state_dict().items()})
        fit(loop)
    monkeypatch.setattr(engine.Loop, "fit", spy)
    result = train(TrainConfig(model="convnext_atto", model_kwargs=TINY, data="synthetic", synthetic_size=32,
                               synthetic_classes=10, epochs=1, batch_size=8, threads=1, device="cpu", quiet=True,
                               init_from=str(out / "encoder.safetensors"), out=str(tmp_path / "ft")))
    assert result.final["n"] > 0
    for k, v in enc.items():
        assert torch.equal(seen[k], v), k
    assert seen["head.fc.weight"].shape[0] == 10


def test_pretrain_ignore_labels_reads_a_flat_folder(tmp_path, capsys):
    from PIL import Image

    from convscope.cli import main

    flat = tmp_path / "images"
    flat.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(20):
        arr = torch.randint(0, 255, (32, 32, 3), dtype=torch.uint8, generator=g).numpy()
        Image.fromarray(arr).save(flat / f"{i:02d}.png")
    args = ["pretrain", "--method", "rotnet", *COMMON, "--data", str(flat), "--epochs", "1", "--batch-size", "4",
            "--val-fraction", "0.2", "--input-size", "32"]
    assert main([*args, "--out", str(tmp_path / "no-flag")]) == 2
    err = capsys.readouterr().err
    assert "no class subdirectories" in err and "--ignore-labels" in err and len(err.strip().splitlines()) == 1
    assert main([*args, "--ignore-labels", "--out", str(tmp_path / "run")]) == 0
    assert "16 train / 4 eval" in capsys.readouterr().out
    assert (tmp_path / "run" / "encoder.safetensors").is_file()


def test_pretrain_bad_values_are_one_line(tmp_path, capsys):
    from convscope.cli import main

    assert main(["pretrain", *COMMON, "--out", str(tmp_path / "a")]) == 2
    assert "--method is required" in capsys.readouterr().err
    assert main(["pretrain", "--method", "spark", *COMMON, "--mask-ratio", "1.5", "--out", str(tmp_path / "b")]) == 2
    assert "mask_ratio must be in (0, 1)" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# -- kill and resume ------------------------------------------------------------------------------------------------
@pytest.mark.slow   # three processes, two of them side by side (~25 s of CPU)
def test_pretrain_rotnet_survives_sigkill_bit_exactly(tmp_path):
    """SIGKILL `convscope pretrain --method rotnet` after its first checkpoint, resume it: the final weights, encoder
    file, checkpoint and history are byte for byte those of a run never interrupted (run alongside)."""

    from .test_resume import kill_after_a_checkpoint

    args = ["pretrain", "--method", "rotnet", *COMMON, "--data", "synthetic", "--synthetic-size", "96",
            "--epochs", "2", "--batch-size", "8", "--checkpoint-every", "3", "--drop-path", "0.1",
            "--ema-decay", "0.9", "--hflip", "0.5"]
    procs = {name: _popen([*args, "--out", str(tmp_path / name)]) for name in ("ref", "killed")}
    victim, ckpts = procs["killed"], tmp_path / "killed" / "checkpoints"
    kill_after_a_checkpoint(victim, ckpts, timeout=120)
    latest = max(ckpts.glob("step-*"))
    assert json.loads((latest / "state.json").read_text())["global_step"] < 2 * (96 // 8)   # killed before the end
    resumed = _popen([*args, "--out", str(tmp_path / "killed"), "--resume"])
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err[-3000:]
    assert f"resumed from {latest}" in out
    assert procs["ref"].wait(timeout=120) == 0
    final = f"step-{2 * (96 // 8):08d}"
    for name in ("last.safetensors", "encoder.safetensors", f"checkpoints/{final}/model.safetensors",
                 f"checkpoints/{final}/ema.safetensors", f"checkpoints/{final}/optimizer.safetensors"):
        assert _bytes(tmp_path / "ref" / name) == _bytes(tmp_path / "killed" / name), name
    strip = ("train_img_per_s", "epoch_time_s")
    hist = [[{k: v for k, v in json.loads(line).items() if k not in strip} for line in
             (tmp_path / run / "metrics.jsonl").read_text().splitlines()] for run in ("ref", "killed")]
    assert hist[0] == hist[1] and len(hist[0]) == 2


def _popen(args: list[str]):
    import os
    import subprocess

    from ..conftest import SRC

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, "-m", "convscope", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
