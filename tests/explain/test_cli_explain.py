"""`convscope explain`, `erf` and `probe`: their files hold what the library computes on the same images."""
from __future__ import annotations

import base64
import io
import json
import re
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from convscope.cli import main
from convscope.data import fashion_mnist, open_dataset
from convscope.data.datasets import FASHION_MNIST_CLASSES, load_image
from convscope.data.transforms import EvalTransform
from convscope.explain import class_activation_map, effective_receptive_field, extract_features, linear_probe, lrp
from convscope.explain.page import ALPHA
from convscope.models.source import load_model, save_model_file

from ..conftest import random_model

TINY = {"depths": [1, 1, 1, 1], "dims": [8, 16, 24, 32]}
MEAN, STD = [0.286], [0.353]
SIDE = 64   # the model input: Fashion-MNIST PNGs (28x28) resized
CLASSES = (0, 1, 7)   # T-shirt/top, Trouser, Sneaker


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny ConvNeXt weights file (random weights, 32x32 grey input, Fashion-MNIST classes), four Fashion-MNIST
    test images as PNGs in one folder, and a class folder of ten test images for each of three classes."""
    root = tmp_path_factory.mktemp("explain_cli")
    model = random_model("convnext_atto", 3, num_classes=10, in_chans=1, **TINY)
    meta = dict(model="convnext_atto", num_classes=10, in_chans=1, input_size=[SIDE, SIDE], load_size=[SIDE, SIDE],
                crop_pct=1.0, mean=MEAN, std=STD, class_names=list(FASHION_MNIST_CLASSES), model_kwargs=TINY)
    weights = root / "tiny.safetensors"
    save_model_file(weights, model.state_dict(), meta)
    test = fashion_mnist(split="test")
    (root / "images").mkdir()
    for i in range(4):
        Image.fromarray(test.images[i, 0].numpy()).save(root / "images" / f"img{i}.png")
    for c in CLASSES:
        folder = root / "data" / FASHION_MNIST_CLASSES[c].replace("/", "-")
        folder.mkdir(parents=True)
        for j, i in enumerate(torch.nonzero(test.labels == c)[:10, 0].tolist()):
            Image.fromarray(test.images[i, 0].numpy()).save(folder / f"{j}.png")
    return dict(root=root, weights=weights, images=sorted((root / "images").iterdir()), data=root / "data")


def _inputs(paths, size=SIDE):
    """The model input of image files as `predict` reads them: load_image at the load size, EvalTransform."""
    raw = torch.stack([load_image(p, "L", size) for p in paths])
    return EvalTransform(size, MEAN, STD)(raw)


def _seen(x):
    return ((x * STD[0] + MEAN[0]) * 255).round().clamp(0, 255)[:, 0].double()


def _heat(png_path, seen, side=SIDE):
    """The heat an overlay PNG holds: (sum of its channels - (1 - ALPHA) x 3 x the grey image) / (ALPHA 255 3),
    read at one pixel per model-input pixel."""
    arr = torch.from_numpy(np.array(Image.open(png_path).convert("RGB"))).double()
    k = arr.shape[0] // side
    assert arr.shape == (side * k, side * k, 3) and k >= 3   # enlarged by a whole factor to >= 192 pixels
    picture = arr[::k, ::k].sum(-1)
    return (picture - (1 - ALPHA) * 3 * seen) / (ALPHA * 255 * 3)


def test_explain_overlays_hold_the_library_maps_and_the_page_inlines_them(files, capsys):
    out = files["root"] / "out"
    assert main(["explain", str(files["weights"]), str(files["root"] / "images"), "--method", "gradcam,lrp",
                 "--layer", "1", "--out", str(out)]) == 0
    model, _ = load_model(files["weights"])
    x = _inputs(files["images"])
    cam = class_activation_map(model, x, "gradcam", layer=1)
    rel = lrp(model, x, cam.targets).input.sum(1).clamp_min(0)
    seen = _seen(x)
    for i, p in enumerate(files["images"]):
        got = _heat(out / f"{p.stem}.gradcam.png", seen[i])
        assert (got - cam.maps[i].double()).abs().max() < 0.006
        assert cam.maps[i].max() > 0.999 and cam.maps[i].std() > 0.1   # a real map, not a flat one
        got = _heat(out / f"{p.stem}.lrp.png", seen[i])
        assert (got - rel[i] / rel[i].max()).abs().max() < 0.006
    page = (out / "explain.html").read_text()
    srcs = re.findall(r'src="([^"]*)"', page)
    assert len(srcs) == 4 * 3 and all(s.startswith("data:image/png;base64,") for s in srcs)   # input + 2 methods
    assert "href" not in page and "url(" not in page and "http" not in page
    overlay = base64.b64decode(srcs[1].split(",", 1)[1])
    assert overlay == (out / "img0.gradcam.png").read_bytes()
    with torch.no_grad():
        probs = model(x).softmax(-1)
    for i in range(4):
        top = int(probs[i].argmax())
        assert f"<td>{FASHION_MNIST_CLASSES[top]}</td><td>{probs[i, top]:.3f}</td>" in page
    assert capsys.readouterr().out.count("wrote ") == 4 * 2 + 1


def test_explain_with_a_model_name_checkpoint_and_target(files, capsys):
    out = files["root"] / "named"
    assert main(["explain", "convnext_atto", str(files["images"][0]), "--checkpoint", str(files["weights"]),
                 "--method", "layercam", "--target", "Trouser", "--layer", "1", "--out", str(out)]) == 0
    model, _ = load_model(files["weights"])
    x = _inputs(files["images"][:1])
    cam = class_activation_map(model, x, "layercam", target=1, layer=1)
    assert (_heat(out / "img0.layercam.png", _seen(x)[0]) - cam.maps[0].double()).abs().max() < 0.006
    assert "layercam for Trouser" in (out / "explain.html").read_text()


def _one_error(capsys, needle):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("convscope") and ": error: " in err[0] and needle in err[0], err


@pytest.mark.parametrize("args,needle", [
    (["{images}/nope.png"], "no image file or folder at"),
    (["{images}", "--method", "gradcam,saliency"], "expected a comma-separated list of gradcam,"),
    (["{images}", "--layer", "stages.9"], "'stages.9' is not a module of convnext_atto"),
    (["{images}", "--layer", "7"], "layer 7 is out of range"),
    (["{root}"], "several images are named '0'"),
    (["{empty}"], "holds no image files"),
    (["{images}", "--target", "Dress shoe"], "--target must be a class index 0..9 or a class name"),
    (["{images}", "--method", "lrp", "--layer", "1"], "--layer applies to gradcam"),
])
def test_explain_bad_input_is_one_line_before_any_work(files, capsys, args, needle):
    (files["root"] / "empty").mkdir(exist_ok=True)
    out = files["root"] / "never"
    fill = dict(root=files["root"], images=files["root"] / "images", empty=files["root"] / "empty")
    assert main(["explain", str(files["weights"]), *[a.format(**fill) for a in args], "--out", str(out)]) == 2
    _one_error(capsys, needle)
    assert not out.exists()


def test_existing_outputs_are_not_overwritten_without_force(files, capsys):
    out = files["root"] / "again"
    out.mkdir()
    (out / "explain.html").write_text("mine")
    argv = ["explain", str(files["weights"]), str(files["images"][0]), "--out", str(out)]
    assert main(argv) == 2
    _one_error(capsys, "again/explain.html exists; pass --force")
    assert [p.name for p in out.iterdir()] == ["explain.html"] and (out / "explain.html").read_text() == "mine"
    assert main([*argv, "--force"]) == 0 and (out / "explain.html").read_text().startswith("<!DOCTYPE html>")


def test_erf_table_is_the_library_erf_of_the_same_images(files, capsys):
    out = files["root"] / "erf"
    assert main(["erf", "convnext_atto", "--checkpoint", str(files["weights"]), "--data", str(files["data"]),
                 "--images", "6", "--size", "80", "--out", str(out)]) == 0
    model, _ = load_model(files["weights"])
    ds = open_dataset(files["data"], "test", in_chans=1, load_size=80).dataset   # --size 80: decoded at 80
    x = EvalTransform(80, MEAN, STD)(ds.get_batch(range(6))[0])
    erf = effective_receptive_field(model, x)
    record = json.loads((out / "erf.json").read_text())
    assert record["images"] == 6 and record["size"] == [80, 80] and record["layer"] == 3
    assert record["area_ratio"] == {f"{t:g}": r for t, r in erf.area_ratio.items()}
    assert list(record["area_ratio"]) == ["0.2", "0.3", "0.5", "0.99"]
    assert len(set(erf.area_ratio.values())) > 1   # a real field: the thresholds give different squares
    table = (out / "erf.md").read_text()
    assert "position (1, 1) of its 2x2 map; 6 images" in table   # 80 / 4 / 2 / 2 / 2, rounded down
    for t, r in erf.area_ratio.items():
        assert f"| {t:g} | {r:.4f} |" in table
    png = Image.open(out / "erf.png")
    assert png.format == "PNG" and png.size[0] > 200


def test_probe_accuracy_is_the_library_probe(files, capsys):
    out = files["root"] / "probe"
    assert main(["probe", str(files["weights"]), "--data", str(files["data"]), "--layer", "1", "--method", "knn",
                 "--out", str(out)]) == 0
    model, _ = load_model(files["weights"])
    opened = open_dataset(files["data"], "train", in_chans=1, load_size=SIDE, held_out=0.2)
    (tx, ty, _), (vx, vy, _) = (d.get_batch(range(len(d))) for d in (opened.dataset, opened.held_out))
    tf = EvalTransform(SIDE, MEAN, STD)
    expected = linear_probe(extract_features(model, tf(tx), 1), ty, extract_features(model, tf(vx), 1), vy, "knn")
    record = json.loads((out / "probe.json").read_text())
    assert record["accuracy"] == expected.accuracy and record["features"] == 16
    assert (record["train_images"], record["test_images"]) == (24, 6)
    assert f"accuracy {100 * expected.accuracy:.2f}%" in capsys.readouterr().out
    assert main(["probe", str(files["weights"]), "--data", str(files["data"]), "--layer", "4", "--out",
                 str(files["root"] / "p2")]) == 2
    _one_error(capsys, "--layer must be a feature_info index in -4..3 or pre_logits; got 4")


def test_core_install_names_the_extra_before_any_work(files, capsys, monkeypatch):
    import convscope.cli.explain

    def no_model(*args):
        raise AssertionError("the model was built before the missing extra was named")
    monkeypatch.setattr(convscope.cli.explain, "open_model", no_model)
    monkeypatch.setitem(sys.modules, "PIL", None)
    out = files["root"] / "core"
    assert main(["explain", str(files["weights"]), str(files["images"][0]), "--out", str(out)]) == 2
    _one_error(capsys, "convscope explain (reading images, writing PNGs) needs pillow, which is not installed: "
                       "pip install 'convscope[lab]'")
    assert main(["probe", str(files["weights"]), "--data", str(files["data"]), "--out", str(out)]) == 2
    _one_error(capsys, "needs pillow, which is not installed: pip install 'convscope[lab]'")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["erf", str(files["weights"]), "--data", "fashion-mnist", "--out", str(out)]) == 2
    _one_error(capsys, "convscope erf (the heatmap) needs matplotlib, which is not installed: pip install")
    assert not out.exists()


def test_heat_colours_run_black_red_yellow_white():
    from convscope.explain.page import heat_colours

    got = heat_colours(torch.tensor([[0, 1 / 3, 2 / 3, 1]]))[:, 0].T
    assert torch.allclose(got, torch.tensor([[0.0, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=got.dtype), atol=1e-6)


def test_html_page_escapes_and_inlines(tmp_path):
    from convscope.explain.page import ExplainedImage, html_page, png_bytes

    png = png_bytes(torch.zeros(1, 2, 2, dtype=torch.uint8))
    page = html_page("t", ["<b>"], [ExplainedImage("a<b>.png", png, [("c&d", 0.5)], [("gradcam", "c&d", png)])])
    assert "&lt;b&gt;" in page and "c&amp;d" in page and "<b>" not in page
    assert Image.open(io.BytesIO(base64.b64decode(re.findall(r'src="data:image/png;base64,([^"]*)"', page)[0]))
                      ).size == (2, 2)
