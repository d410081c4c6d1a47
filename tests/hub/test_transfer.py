"""Transfer: the classifier re-initialised for another number of classes, the input convolution adapted to another
number of channels (timm's adapt_input_conv arithmetic), checked on outputs."""
from __future__ import annotations

import pytest
import torch

import convscope
from convscope.models import pretrained as hub
from convscope.models import save_weights


@pytest.fixture(scope="module")
def atto_file(tmp_path_factory):
    """A ConvNeXt-atto (RGB, 1000 classes) with random weights, saved; and the model itself in eval mode."""
    torch.manual_seed(0)
    model = convscope.create_model("convnext_atto").eval()
    path = save_weights(model, tmp_path_factory.mktemp("w") / "atto.safetensors")
    return model, path


def test_adapt_input_conv_arithmetic():
    w = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    assert torch.equal(hub.adapt_input_conv(w, 1), w.sum(dim=1, keepdim=True))
    five = hub.adapt_input_conv(w, 5)
    assert torch.allclose(five, torch.cat([w, w[:, :2]], dim=1) * 3 / 5)
    six = torch.cat([w, 2 * w], dim=1)       # 6 channels: each group of three is summed for one channel
    assert torch.equal(hub.adapt_input_conv(six, 1), torch.stack([w.sum(1), 2 * w.sum(1)], dim=1))
    assert hub.adapt_input_conv(w, 3) is w
    with pytest.raises(ValueError, match="cannot adapt an input convolution with 4 channels to 2"):
        hub.adapt_input_conv(torch.zeros(2, 4, 1, 1), 2)


def test_grey_model_equals_rgb_model_on_the_repeated_image(atto_file):
    rgb, path = atto_file
    with torch.device("meta"):     # loading assigns every tensor of the file: the model becomes a CPU one
        grey = convscope.create_model("convnext_atto", in_chans=1).eval()
    report = hub.load_pretrained(grey, "convnext_atto", path, in_chans=1)
    assert report.stem_adapted == ("stem.0.weight (3 -> 1 channels)",) and report.head_reset == ()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        # the stem conv itself (the LayerNorm after it would hide a wrong scale), then the logits
        assert torch.allclose(grey.stem[0](x), rgb.stem[0](x.repeat(1, 3, 1, 1)), atol=1e-5, rtol=1e-5)
        assert torch.allclose(grey(x), rgb(x.repeat(1, 3, 1, 1)), atol=1e-4, rtol=1e-4)


def test_six_channels_keep_the_output_on_equal_channels(atto_file):
    rgb, path = atto_file
    with torch.device("meta"):
        six = convscope.create_model("convnext_atto", in_chans=6).eval()
    hub.load_pretrained(six, "convnext_atto", path)
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(six(x.repeat(1, 6, 1, 1)), rgb(x.repeat(1, 3, 1, 1)), atol=1e-4, rtol=1e-4)


def test_other_num_classes_reinitialises_the_classifier_only(atto_file, caplog):
    rgb, path = atto_file
    torch.manual_seed(1)
    model = convscope.create_model("convnext_atto", num_classes=10)
    fresh_head = model.head.fc.weight.detach().clone()
    with caplog.at_level("WARNING", logger="convscope.models.pretrained.load"):
        report = hub.load_pretrained(model, "convnext_atto", path, num_classes=10)
    assert report.head_reset == ("head.fc.bias", "head.fc.weight")
    assert torch.equal(model.head.fc.weight, fresh_head), "the classifier was not left at its fresh initialisation"
    ours, theirs = model.state_dict(), rgb.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours if not k.startswith("head.fc."))
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["convnext_atto: classifier re-initialised for 10 classes (dropped head.fc.bias, head.fc.weight "
                     "from atto.safetensors)"]


def test_a_file_without_classifier_leaves_it_fresh(atto_file, tmp_path, caplog):
    """A release without a classifier (num_classes 0, e.g. DINOv3's ConvNeXts) loads into a model with one."""
    rgb, _ = atto_file
    path = save_weights({k: v for k, v in rgb.state_dict().items() if not k.startswith("head.fc.")},
                        tmp_path / "backbone.safetensors")
    torch.manual_seed(1)
    model = convscope.create_model("convnext_atto", num_classes=3)
    fresh_head = model.head.fc.weight.detach().clone()
    with caplog.at_level("WARNING", logger="convscope.models.pretrained.load"):
        report = hub.load_pretrained(model, "convnext_atto", path, num_classes=3)
    assert report.head_reset == ("head.fc.bias", "head.fc.weight") and torch.equal(model.head.fc.weight, fresh_head)
    assert torch.equal(model.stem[0].weight, rgb.stem[0].weight)
    assert [r.getMessage() for r in caplog.records] == [
        "convnext_atto: classifier re-initialised for 3 classes (backbone.safetensors has no head.fc.bias, "
        "head.fc.weight)"]
    partial = save_weights({k: v for k, v in rgb.state_dict().items() if k != "head.fc.bias"},
                           tmp_path / "partial.safetensors")   # a classifier with a tensor missing is broken
    with pytest.raises(ValueError, match=r"weights do not fit convnext_atto: 1 missing keys \(head.fc.bias\)"):
        hub.load_pretrained(convscope.create_model("convnext_atto"), "convnext_atto", partial)


def test_a_wrong_model_or_wrong_arguments_fail_in_one_line(atto_file):
    _, path = atto_file
    with torch.device("meta"):
        femto = convscope.create_model("convnext_femto")
    with pytest.raises(ValueError, match=r"weights do not fit convnext_femto: .*shape mismatches \(stem.0.weight: "
                                         r"file \(40, 3, 4, 4\) vs model \(48, 3, 4, 4\)"):
        hub.load_pretrained(femto, "convnext_femto", path)
    with pytest.raises(ValueError, match="num_classes=10 but the model was built with num_classes=1000"):
        hub.load_pretrained(femto, "convnext_femto", path, num_classes=10)


def test_pretrained_cfg_layers_match_timm_names():
    assert hub.pretrained_cfg_layers("convnext_atto") == {"first_conv": "stem.0", "classifier": "head.fc"}
    assert hub.pretrained_cfg_layers("crossvit_9_240") == {
        "first_conv": ("patch_embed.0.proj", "patch_embed.1.proj"), "classifier": ("head.0", "head.1")}
    assert hub.pretrained_cfg_layers("caformer_s18")["classifier"] == "head.fc.fc2"


def test_create_model_fine_tunes_from_a_file_for_other_classes_and_channels(atto_file):
    """`create_model(name, pretrained=FILE, num_classes=10, in_chans=1)`: the classifier fresh, the stem adapted
    (summed over RGB), everything else the file's, and the pretrained_cfg names both layers."""
    rgb, path = atto_file
    model = convscope.create_model("convnext_atto", pretrained=path, num_classes=10, in_chans=1).eval()
    assert model.pretrained_cfg["first_conv"] == "stem.0" and model.pretrained_cfg["classifier"] == "head.fc"
    assert torch.equal(model.stem[0].weight, rgb.stem[0].weight.sum(1, keepdim=True))
    ours, theirs = model.state_dict(), rgb.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours if not k.startswith(("head.fc.", "stem.0.weight")))
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 10)


def test_create_model_takes_a_release_tag_from_the_cache(atto_file, caches):
    """A tag resolves through the registry to the cached file (offline: nothing is fetched)."""
    rgb, path = atto_file
    release = hub.find_release("convnext_atto")
    hub.import_file(path, release.tag)                  # "convnext_atto.d2_in1k"
    hub.set_offline(True)
    try:
        model = convscope.create_model("convnext_atto", pretrained=release.tag.split(".", 1)[1])
    finally:
        hub.set_offline(False)
    assert all(torch.equal(v, rgb.state_dict()[k]) for k, v in model.state_dict().items())


def test_every_family_names_its_first_conv_and_classifier():
    """create_model's pretrained_cfg agrees with the names found on a 3-channel, 1000-class build, for the smallest
    variant of every family."""
    smallest: dict[str, str] = {}
    for name in convscope.list_models():
        smallest.setdefault(convscope.model_card(name).family, name)
    for name in smallest.values():
        with torch.device("meta"):
            model = convscope.create_model(name)
        cfg = model.pretrained_cfg
        assert {"first_conv": cfg["first_conv"], "classifier": cfg["classifier"]} == hub.pretrained_cfg_layers(name)
        assert cfg["first_conv"] is not None and cfg["classifier"] is not None, name
