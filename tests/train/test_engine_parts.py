"""Engine pieces: weight-decay groups, the LR schedule, EMA, the multi-sample dropout head, evaluation."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import convscope
from convscope.data.datasets import TensorImageDataset
from convscope.data.loaders import Loader
from convscope.data.transforms import EvalTransform
from convscope.train.evaluation import evaluate
from convscope.train.recipe import ModelEma, TrainModule, WarmupCosine, loss_fn, param_groups

TINY_CONVNEXT = dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32))


def _names(model, group):
    ids = {id(p) for p in group["params"]}
    return {n for n, p in model.named_parameters() if id(p) in ids}


@pytest.mark.parametrize("name,kwargs", [
    ("convnext_atto", TINY_CONVNEXT),                                           # layer scale gamma, LN, biases
    ("convnextv2_atto", TINY_CONVNEXT),                                         # GRN weight/bias
    ("caformer_s18", dict(depths=(1, 1, 1, 1), dims=(8, 16, 32, 32))),       # res/layer scales, MLP head
])
def test_weight_decay_groups(name, kwargs):
    model = convscope.create_model(name, num_classes=5, **kwargs)
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    params = dict(model.named_parameters())
    assert _names(model, decay) == {n for n, p in params.items() if p.ndim >= 2}
    assert _names(model, no_decay) == {n for n, p in params.items() if p.ndim <= 1}
    no_decay_names = _names(model, no_decay)
    assert any(n.endswith(".bias") for n in no_decay_names)
    assert any("norm" in n and n.endswith(".weight") for n in no_decay_names)
    if name == "convnext_atto":
        assert "stages.0.blocks.0.gamma" in no_decay_names
    if name == "caformer_s18":
        assert any("layer_scale" in n or "res_scale" in n for n in no_decay_names)


def test_frozen_parameters_are_left_out():
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    model[0].weight.requires_grad_(False)
    decay, no_decay = param_groups(model, 0.1)
    assert decay["params"] == [] and len(no_decay["params"]) == 3


def test_lr_schedule_values():
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1.0)
    s = WarmupCosine(opt, lr=1e-3, min_lr=1e-5, warmup_steps=10, total_steps=110)
    assert s.lr_at(0) == pytest.approx(1e-4)
    assert s.lr_at(4) == pytest.approx(5e-4)
    assert s.lr_at(9) == pytest.approx(1e-3)
    assert s.lr_at(10) == pytest.approx(1e-3)                                   # cosine starts at the peak
    assert s.lr_at(60) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5)             # half way: the mean
    assert s.lr_at(35) == pytest.approx(1e-5 + (1e-3 - 1e-5) * (1 + math.cos(math.pi / 4)) / 2)
    assert s.lr_at(110) == pytest.approx(1e-5) and s.lr_at(500) == pytest.approx(1e-5)
    assert s.step(60) == opt.param_groups[0]["lr"] == pytest.approx(5.05e-4)
    no_warmup = WarmupCosine(opt, lr=2e-3, min_lr=0.0, warmup_steps=0, total_steps=4)
    assert [no_warmup.lr_at(i) for i in range(4)] == pytest.approx([2e-3, 2e-3 * (1 + math.cos(math.pi / 4)) / 2,
                                                                    1e-3, 2e-3 * (1 - math.cos(math.pi / 4)) / 2])


def test_ema_update_formula():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    ema = ModelEma(model, decay=0.9, warmup=False)
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    model.train()(torch.randn(8, 4))              # moves BN running stats and num_batches_tracked
    ema.update(model, step=0)
    cur = model.state_dict()
    for k, v in ema.module.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(v, 0.9 * before[k] + 0.1 * cur[k], rtol=0, atol=1e-6), k
        else:
            assert torch.equal(v, cur[k]), k
    assert ModelEma(model, 0.9999, warmup=True).decay_at(0) == pytest.approx(0.1)
    assert ModelEma(model, 0.9999, warmup=True).decay_at(90) == pytest.approx(91 / 100)
    assert ModelEma(model, 0.99, warmup=True).decay_at(10 ** 6) == 0.99
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_multi_sample_dropout_head():
    torch.manual_seed(0)
    model = convscope.create_model("convnext_atto", num_classes=3, **TINY_CONVNEXT)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    tm = TrainModule(model, msd_samples=5, msd_drop=0.5).train()
    logits = tm(x)
    assert logits.shape == (5, 4, 3)
    assert not torch.allclose(logits[0], logits[1])           # different dropout masks
    assert loss_fn(logits, y, 0.0).item() == pytest.approx(
        sum(nn.functional.cross_entropy(lg, y).item() for lg in logits) / 5, rel=1e-6)
    assert tm.eval()(x).shape == (4, 3)
    same = TrainModule(model, msd_samples=3, msd_drop=0.0).train()(x)
    assert torch.allclose(same[0], same[2]) and torch.allclose(same[0], model.train()(x), atol=1e-6)


class _LookupModel(nn.Module):
    """Logits looked up by the image's index, written into its pixels."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table

    def forward(self, x):
        return self.table[(x[:, 0, 0, 0] * 255).round().long()]


def test_evaluate_top1_top5_and_confusion():
    n, c = 12, 6
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 4, 4).contiguous()
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5])
    g = torch.Generator().manual_seed(0)
    table = torch.randn(n, c, generator=g)
    ds = TensorImageDataset(images, labels, tuple("abcdef"))
    loader = Loader(ds, EvalTransform(4, (0.0,), (1.0,)), batch_size=5, train=False)
    r = evaluate(_LookupModel(table), loader, c, torch.device("cpu"))
    pred = table.argmax(1)
    top5 = table.topk(5, 1).indices
    assert r["n"] == n
    assert r["top1"] == pytest.approx(100 * (pred == labels).float().mean().item())
    assert r["top5"] == pytest.approx(100 * (top5 == labels[:, None]).any(1).float().mean().item())
    assert r["loss"] == pytest.approx(nn.functional.cross_entropy(table, labels).item(), rel=1e-6)
    expected = torch.zeros(c, c, dtype=torch.long)
    for t, p in zip(labels, pred, strict=False):
        expected[t, p] += 1
    assert r["confusion"] == expected.tolist()


def test_grayscale_data_for_a_three_channel_model():
    """Fashion-MNIST is 1-channel: in_chans=1 by default, or the channel repeated (a view) for in_chans=3."""
    from convscope.train import TrainConfig
    from convscope.train.pipeline import build_data

    traits = convscope.models.model_traits("convnext_atto")
    gray = build_data(TrainConfig(model="convnext_atto", data="fashion-mnist", data_limit=64, eval_limit=32), traits)
    rgb = build_data(TrainConfig(model="convnext_atto", data="fashion-mnist", data_limit=64, eval_limit=32,
                                 in_chans=3), traits)
    assert gray.in_chans == 1 and gray.train.images.shape == (64, 1, 28, 28) and len(gray.mean) == 1
    assert rgb.in_chans == 3 and rgb.train.images.shape == (64, 3, 28, 28) and rgb.mean == gray.mean * 3
    assert torch.equal(rgb.train.images[:, 2], gray.train.images[:, 0])
    assert rgb.input_size == gray.input_size == (32, 32) and len(rgb.eval) == 32


def _spec(n_train: int, native: tuple[int, int], input_size: tuple[int, int], note: str = ""):
    from convscope.train.pipeline import DataSpec

    return DataSpec(train=range(n_train), eval=range(10), classes=tuple("abcdefghij"), in_chans=1,
                    input_size=input_size, load_size=input_size, crop_pct=1.0, mean=(0.5,), std=(0.5,),
                    description="test", native_size=native, size_note=note)


def test_data_aware_defaults_by_data_size():
    from convscope.train import TrainConfig
    from convscope.train.pipeline import resolve_defaults

    cfg = TrainConfig(model="convnext_atto")
    note = "the data's 28x28 raised to 64: the smallest size at which convnext_atto's last stage (stride 32) still " \
           "sees 2x2"
    small, line = resolve_defaults(cfg, _spec(7_200, (28, 28), (64, 64), note))
    assert (small.batch_size, small.lr, small.warmup_epochs) == (64, 0.002, 0.5)
    assert (small.scale, small.ratio) == ((1.0, 1.0), (1.0, 1.0))
    assert line.startswith("data-aware defaults: --batch-size 64 --lr 0.002 --warmup-epochs 0.5 --scale 1,1 "
                           "--ratio 1,1; input 64x64 (the data's 28x28 raised to 64: ")
    assert "7,200 training images (small: < 20,000)" in line
    big, line = resolve_defaults(cfg, _spec(50_000, (224, 224), (224, 224)))
    assert (big.batch_size, big.lr, big.warmup_epochs, big.scale) == (128, 0.001, 1.0, (0.08, 1.0))
    assert big.ratio == pytest.approx((3 / 4, 4 / 3)) and "input" not in line and "not small" in line
    mid, _ = resolve_defaults(cfg, _spec(7_200, (224, 224), (224, 224)))
    assert mid.scale == (0.35, 1.0) and mid.batch_size == 64
    # everything given: no line, unless the input size was chosen
    given = TrainConfig(model="convnext_atto", batch_size=32, lr=1e-3, warmup_epochs=1, scale=(1, 1), ratio=(1, 1))
    assert resolve_defaults(given, _spec(7_200, (224, 224), (224, 224)))[1] == ""
    _, line = resolve_defaults(given, _spec(7_200, (28, 28), (64, 64), note))
    assert line == f"data-aware defaults: input 64x64 ({note}); because: 28x28 images (pass a flag to override)"
