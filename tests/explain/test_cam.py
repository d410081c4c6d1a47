"""Class activation maps: parity with pytorch-grad-cam, every family, layer choice, hooks and memory."""
from __future__ import annotations

import gc

import pytest
import torch

from convscope.explain import class_activation_map, default_layer, resolve_layer

from ..conftest import import_timm, random_model
from .zoo import small_model, tiny_convnext, tiny_input

GRAD_METHODS = ("gradcam", "gradcam++", "layercam")


def _pytorch_grad_cam():
    import_timm()  # grad-cam imports torchvision, which needs the shim on a CPU-only torch
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    classes = {"gradcam": pytorch_grad_cam.GradCAM, "gradcam++": pytorch_grad_cam.GradCAMPlusPlus,
               "layercam": pytorch_grad_cam.LayerCAM, "scorecam": pytorch_grad_cam.ScoreCAM}
    return classes, ClassifierOutputTarget


def _theirs(model, x, method, tap, targets, reshape):
    classes, Target = _pytorch_grad_cam()
    with classes[method](model, [tap.module], reshape_transform=reshape) as cam:
        return torch.from_numpy(cam(x, [Target(t) for t in targets]))


# float64 on both sides: Grad-CAM++'s cubes make float32 sums differ in the last bits between numpy and torch
@pytest.mark.parametrize("name,layer,side", [("convnext_atto", -1, 64), ("convnext_atto", 1, 32),
                                             ("volo_d1_224", -1, 32), ("convit_tiny", None, 32)])
def test_parity_with_pytorch_grad_cam(name, layer, side):
    model = random_model(name).double()
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    tap = resolve_layer(model, layer, (side, side))
    # token models: the model's own tap is the reshape_transform pytorch-grad-cam needs
    reshape = tap.to_map if name != "convnext_atto" else None
    for method in GRAD_METHODS:
        ours = class_activation_map(model, x, method, target=[3, 7], layer=layer)
        theirs = _theirs(model, x, method, tap, [3, 7], reshape)
        assert ours.maps.shape == (2, side, side)
        assert (ours.maps.float() - theirs).abs().max() < 1e-5, method
        if method == "gradcam":
            assert ours.maps.amax((1, 2)).min() > 0.99  # a real map, not all zeros


def test_scorecam_parity():
    model = random_model("convnext_atto").double()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours = class_activation_map(model, x, "scorecam", target=5, layer=0, batch_size=16)
    theirs = _theirs(model, x, "scorecam", resolve_layer(model, 0, (32, 32)), [5], None)
    assert (ours.maps.float() - theirs).abs().max() < 1e-5
    assert ours.raw.shape == (1, 8, 8)


def test_class_token_families_default_to_the_last_block_input():
    # the patch tokens after their last block do not reach the class-token logits: their gradient there is zero
    model = small_model("convit_tiny")
    assert default_layer(model) == "blocks.10"
    with pytest.raises(ValueError, match="does not depend on layer 'blocks.11'"):
        class_activation_map(model, tiny_input(model), layer=-1)


def test_grad_cam_by_hand():
    # Grad-CAM at the last stage = ReLU(sum_c mean(dlogit/dA_c) A_c), computed here without hooks
    model = tiny_convnext()
    x = tiny_input(model, batch=2)
    feats = model.forward_features(x).detach().requires_grad_(True)
    logit = model.forward_head(feats)[:, 4].sum()
    (g,) = torch.autograd.grad(logit, feats)
    expected = (g.mean((2, 3))[:, :, None, None] * feats).sum(1).clamp_min(0)
    cam = class_activation_map(model, x, target=4, layer=-1)
    torch.testing.assert_close(cam.raw, expected.detach(), rtol=1e-5, atol=1e-6)


def _live_tensors() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor))


def test_no_hook_and_no_memory_left_after_100_calls():
    model = tiny_convnext()
    x = tiny_input(model)
    class_activation_map(model, x, "layercam")  # warm up lazily created state
    before = _live_tensors()
    for i in range(100):
        class_activation_map(model, x, GRAD_METHODS[i % 3], layer=i % 4)
    assert _live_tensors() == before
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
    assert all(p.grad is None for p in model.parameters())


def test_hook_removed_and_modes_restored_when_the_call_fails():
    model = tiny_convnext()
    model.train()
    model.stages[0].eval()
    with pytest.raises(ValueError, match="target must be"):
        class_activation_map(model, tiny_input(model), target=10)
    assert not any(m._forward_hooks for m in model.modules())
    assert model.training and not model.stages[0].training and model.stages[1].training


@pytest.mark.parametrize("kwargs,match", [
    (dict(method="gradcam+"), "method must be one of"),
    (dict(layer=4), "layer 4 is out of range"),
    (dict(layer="stages.9"), "'stages.9' is not a module"),
    (dict(layer="head.fc"), "not an NCHW map"),
    (dict(batch_size=0), "batch_size must be a positive integer"),
])
def test_bad_values(kwargs, match):
    model = tiny_convnext()
    with pytest.raises(ValueError, match=match):
        class_activation_map(model, tiny_input(model), **kwargs)


def test_bad_input():
    with pytest.raises(ValueError, match="expected a float image batch"):
        class_activation_map(tiny_convnext(), torch.zeros(3, 32, 32))
    with pytest.raises(TypeError, match="target must be a class index"):
        class_activation_map(tiny_convnext(), torch.zeros(1, 3, 32, 32), target="cat")


def test_token_grid_that_does_not_fit_the_input():
    model = small_model("cvt_13_224")  # its default layer is a block inside the last stage: tokens, not a map
    with pytest.raises(ValueError, match="not the tokens of a 5x5 grid"):
        class_activation_map(model, torch.randn(1, 3, 66, 66))
