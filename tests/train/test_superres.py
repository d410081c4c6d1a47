"""Super-resolution: PSNR and SSIM against straightforward references written here, the SR models by name, and
`convscope train --task sr`: a short ESPCN x2 run beats bicubic on held-out Fashion-MNIST images."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from convscope.cli import main
from convscope.heads.sr import SR_MODELS, create_sr_model
from convscope.train.dense import psnr, ssim
from convscope.train.superres import downsample_pairs


def _ssim_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Wang et al. 2004 on one single-channel image pair in [0, 1]: an 11x11 Gaussian window (sigma 1.5), local
    weighted moments at every position where the window fits inside the image, the SSIM map's mean."""
    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5 ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    values = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            a, b = x[i:i + 11, j:j + 11], y[i:i + 11, j:j + 11]
            mu_a, mu_b = (w * a).sum(), (w * b).sum()
            var_a, var_b = (w * (a - mu_a) ** 2).sum(), (w * (b - mu_b) ** 2).sum()
            cov = (w * (a - mu_a) * (b - mu_b)).sum()
            num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
            values.append(num / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2)))
    return float(np.mean(values))


def test_ssim_and_psnr_match_references_written_out():
    rng = np.random.default_rng(0)
    x = rng.random((2, 1, 16, 19))
    y = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1)
    got = ssim(torch.from_numpy(x), torch.from_numpy(y))
    assert got.tolist() == pytest.approx([_ssim_reference(x[k, 0], y[k, 0]) for k in range(2)], abs=1e-12)
    mse = ((x - y) ** 2).reshape(2, -1).mean(1)
    assert psnr(torch.from_numpy(x), torch.from_numpy(y)).tolist() == pytest.approx(list(10 * np.log10(1 / mse)))
    assert ssim(torch.from_numpy(x), torch.from_numpy(x)).tolist() == pytest.approx([1.0, 1.0], abs=1e-12)
    # three channels: the mean of the channels' SSIM
    z = rng.random((1, 3, 12, 12))
    t = np.clip(z * 0.8 + 0.1, 0, 1)
    assert float(ssim(torch.from_numpy(z), torch.from_numpy(t))) == pytest.approx(
        np.mean([_ssim_reference(z[0, c], t[0, c]) for c in range(3)]), abs=1e-12)
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.zeros(1, 1, 10, 12), torch.zeros(1, 1, 10, 12))


@pytest.mark.parametrize("name", sorted(SR_MODELS))
@pytest.mark.parametrize("scale", [2, 3])
def test_sr_models_upscale_by_their_factor(name, scale):
    model = create_sr_model(name, scale, in_chans=1)
    assert model(torch.rand(2, 1, 9, 10)).shape == (2, 1, 9 * scale, 10 * scale)


def test_espcn_has_the_published_layout_and_large_kernel_sr_adds_to_bicubic():
    espcn = create_sr_model("espcn", 3)
    shapes = [tuple(m.weight.shape) for m in espcn.modules() if isinstance(m, torch.nn.Conv2d)]
    assert shapes == [(64, 1, 5, 5), (32, 64, 3, 3), (9, 32, 3, 3)]
    lksr = create_sr_model("lksr", 2)
    torch.nn.init.zeros_(lksr.upsample.conv.weight)
    torch.nn.init.zeros_(lksr.upsample.conv.bias)
    x = torch.rand(1, 1, 12, 12)
    torch.testing.assert_close(lksr(x), F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False))


def test_downsampled_pairs_crop_to_a_multiple_of_the_scale():
    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    pairs = downsample_pairs(images, 3)
    assert pairs.images.shape == (3, 1, 9, 9) and pairs.targets.shape == (3, 1, 27, 27)
    assert torch.equal(pairs.targets, images[..., :27, :27])
    assert torch.equal(downsample_pairs(images, 3).images, pairs.images)   # deterministic


def test_a_short_espcn_x2_run_beats_bicubic_on_held_out_images(tmp_path, capsys):
    out = tmp_path / "sr"
    assert main(["train", "--task", "sr", "--model", "espcn", "--scale", "2", "--data-limit", "2048",
                 "--eval-limit", "256", "--epochs", "2", "--threads", "1", "--device", "cpu", "--progress", "none",
                 "--out", str(out)]) == 0
    r = json.loads((out / "sr.json").read_text())
    # measured: PSNR 19.89 dB against bicubic's 19.26, SSIM 0.736 against 0.717 (256 Fashion-MNIST test images)
    assert r["n"] == 256 and r["scale"] == 2
    assert r["psnr"] > r["bicubic_psnr"] + 0.3 and r["ssim"] > r["bicubic_ssim"]
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out), "--limit", "256", "--json", "--device", "cpu"]) == 0
    e = json.loads(capsys.readouterr().out)   # the same test images, evaluated again from the weights file
    assert e["psnr"] == pytest.approx(r["psnr"], rel=1e-6) and e["bicubic_psnr"] == pytest.approx(r["bicubic_psnr"])


@pytest.mark.parametrize("argv, needle", [
    (["--model", "espcn", "--scale", "5"], "--scale with --task sr is the upscaling factor, one of 2, 3, 4; got 5"),
    (["--model", "convnext_atto"], "--task sr: --model must be one of espcn, lksr; got 'convnext_atto'"),
])
def test_sr_setting_errors_are_one_line(tmp_path, capsys, argv, needle):
    assert main(["train", "--task", "sr", *argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
