"""int8 PT2E quantisation: per-channel int8 weights 4x smaller than fp32 (tensors and file), every conv / linear
quantised or listed in float with a reason, outputs near the float model, QAT runs and converts."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import convscope
from convscope.deploy import prepare_for_inference
from convscope.models import save_weights

quantize = pytest.importorskip("convscope.deploy.quantize")
if not quantize.available():
    pytest.skip(quantize.EXTRA_HINT, allow_module_level=True)


def _data(n=3, batch=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, size, size, generator=g) for _ in range(n)]


@pytest.fixture(scope="module")
def quantized():
    torch.manual_seed(0)
    model = prepare_for_inference(convscope.create_model("inception_next_atto", num_classes=10))
    return model, quantize.quantize_int8(model, _data(), num_batches=3)


def test_ptq_report_and_weight_storage(quantized, tmp_path):
    model, q = quantized
    r = q.report
    assert r.calibration_batches == 3 and q.input_shape == (2, 3, 32, 32)
    assert r.weight_ratio == 4.0 and r.total_ratio > 3.5
    layers = {layer.name: layer for layer in r.layers}
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            assert layers[name].int8, (name, layers[name].reason)
    floats = r.left_in_float()
    assert floats and all(layer.reason for layer in floats)
    assert {"GELU", "LayerNorm"} <= {layer.kind for layer in floats}
    assert "left in float" in r.summary()
    # on disk: the exported int8 program against the fp32 safetensors
    fp32 = save_weights(model, tmp_path / "fp32.safetensors").stat().st_size
    path = quantize.save_int8(q, tmp_path / "int8.pt2")
    sizes = quantize.archive_sizes(path)
    # the tensors on disk (int8 weights, per-channel scales and zero points, float norms and biases); the
    # serialised graph beside them is a fixed ~1 MB for this model
    assert fp32 / sizes["weights"] > 3.5, (fp32, sizes)
    assert sizes["file"] < fp32 / 2
    x = _data(1, seed=5)[0]
    with torch.no_grad():
        torch.testing.assert_close(quantize.load_int8(tmp_path / "int8.pt2")(x), q.module(x))


def test_ptq_outputs_near_float(quantized):
    model, q = quantized
    x = _data(1, seed=7)[0]
    with torch.no_grad():
        want, got = model(x), q.module(x)
    assert ((got - want).abs().max() / want.abs().max()).item() < 0.15


def test_calibration_accepts_labelled_batches_and_refits_the_batch():
    model = prepare_for_inference(convscope.create_model("convnext_atto", num_classes=4))
    data = [(torch.randn(5, 3, 32, 32), torch.zeros(5, dtype=torch.long))]
    q = quantize.quantize_int8(model, data, example_input=torch.randn(2, 3, 32, 32))
    assert q.input_shape == (2, 3, 32, 32) and q.report.calibration_batches == 1
    with pytest.raises(ValueError, match="tensors or"):
        quantize.quantize_int8(model, ["not a tensor"])


def test_qat_fine_tunes_and_converts():
    torch.manual_seed(0)
    model = prepare_for_inference(convscope.create_model("convnext_atto", num_classes=4))
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(2, 3, 32, 32, generator=g), torch.randint(0, 4, (2,), generator=g)) for _ in range(2)]
    q = quantize.qat_int8(model, data, data[0][0], steps=2, lr=1e-4)
    assert "QAT (2 steps)" in q.report.method and q.report.weight_ratio == 4.0
    with torch.no_grad():
        assert q.module(data[0][0]).shape == (2, 4)


def test_optimizer_int8_forms_ptq_and_qat(monkeypatch):
    """build_form's int8 paths (PTQ on unlabelled batches, QAT on labelled ones), without the Inductor compile."""
    from convscope.deploy.optimize import Form, build_form
    monkeypatch.setattr(quantize, "compile_int8", lambda m: m)
    model = convscope.create_model("convnext_atto", num_classes=4).eval()
    x = torch.randn(2, 3, 32, 32)
    run, info = build_form(model, Form(dtype="int8", compile=True, prepare=True), x)
    assert run(x).shape == (2, 4) and info["quant_report"].weight_ratio == 4.0
    g = torch.Generator().manual_seed(0)
    labelled = [(torch.randn(2, 3, 32, 32, generator=g), torch.randint(0, 4, (2,), generator=g)) for _ in range(2)]
    run, info = build_form(model, Form(dtype="int8", compile=True, prepare=True, qat_steps=2), x, labelled)
    assert run(x).shape == (2, 4) and "QAT (2 steps)" in info["quant_report"].method
    assert "QAT 2 steps" in Form(dtype="int8", qat_steps=2).describe()


def test_compile_int8_leaves_inductor_freezing_off_for_other_compiles():
    """Freezing is on while the int8 model compiles and runs (a quantised convolution does not lower without it)
    and off after: a float model compiled later in the process (optimize's compile step after its int8 step,
    deploy_speed's forms) is not frozen behind its back."""
    import torch._inductor.config as cfg

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1), nn.Flatten(1)).eval()
    x = torch.randn(1, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    q = quantize.quantize_int8(model, [x], x)
    assert cfg.freezing is False
    fn = quantize.compile_int8(q.module)
    with torch.no_grad():
        y, ref = fn(x), q.module(x)
    assert cfg.freezing is False
    assert y.shape == (1, 64) and (y - ref).abs().max() < 0.1 * ref.abs().max()
