"""PixPro against the official code (zdaxie/PixPro, `contrast/models/PixPro.py`): the pixel-propagation loss, the
pixel-propagation module, the momentum update and the whole forward (both views, both branches, one momentum step)
on the same weights, views and crop coordinates, in float64.

    python benchmarks/pixpro_parity.py --checkout PATH [--out benchmarks/results/pixpro_parity.md]

PATH is a checkout of https://github.com/zdaxie/PixPro (its `contrast` package is imported from there; nothing of
it is copied). The official module is driven through its own functions with our modules in its attributes'
places: `regression_loss`, `PixPro.featprop`, `PixPro._momentum_update_key_encoder` and `PixPro.forward`.
"""
from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import types
from pathlib import Path

EXACT, LOSS_TOL = 1e-12, 1e-7   # float64 rounding; the official mask's float32 count (see the page)


def _official(checkout: Path):
    sys.path.insert(0, str(checkout))
    return importlib.import_module("contrast.models.PixPro")   # the module (the package exports the class by name)


def _coords(n: int, g):
    import torch

    a, b = torch.rand(n, 2, generator=g, dtype=torch.float64) * 0.6, 0.4 + torch.rand(n, 2, generator=g,
                                                                                    dtype=torch.float64) * 0.6
    c = torch.cat([a, b], 1)
    return torch.where((torch.arange(n) % 2 == 0).view(-1, 1), c[:, [2, 1, 0, 3]], c)   # half of them flipped


class _Encoder:
    """A callable with the `parameters` the official momentum update walks."""

    def __init__(self, module) -> None:
        self.module = module

    def __call__(self, x):
        return self.module(x)[-1]

    def parameters(self):
        return self.module.parameters()


def _namespace(official, ours, steps_done: int) -> types.SimpleNamespace:
    """The official PixPro's attributes, filled with our modules, its methods bound to them."""
    ns = types.SimpleNamespace(
        encoder=_Encoder(ours.encoder), encoder_k=_Encoder(ours.encoder_target),
        projector=ours.projector, projector_k=ours.projector_target, value_transform=ours.propagation.value,
        pixpro_p=ours.propagation.p, pixpro_clamp_value=ours.propagation.clamp, pixpro_momentum=ours.base_momentum,
        pixpro_pos_ratio=ours.pos_ratio, pixpro_ins_loss_weight=0.0, k=steps_done, K=ours.total_steps)
    for name in ("featprop", "_momentum_update_key_encoder", "forward"):
        setattr(ns, name, types.MethodType(getattr(official.PixPro, name), ns))
    return ns


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkout", type=Path, required=True, help="a clone of github.com/zdaxie/PixPro")
    ap.add_argument("--model", default="convnext_atto")
    ap.add_argument("--out", type=Path, default=None, help="write the results page here")
    a = ap.parse_args()
    if not (a.checkout / "contrast" / "models" / "PixPro.py").is_file():
        ap.error(f"--checkout {a.checkout} is not a PixPro checkout (no contrast/models/PixPro.py)")
    import torch
    import torch.nn.functional as F

    official = _official(a.checkout)
    from common import cpu_name

    from convscope.heads.pixpro import PixPro, pixpro_loss

    torch.set_default_dtype(torch.float64)
    g = torch.Generator().manual_seed(0)
    rows = []

    # the loss, at two map sizes and two radii
    for (h, w), ratio in (((7, 7), 0.7), ((4, 6), 1.5)):
        q = F.normalize(torch.randn(6, 32, h, w, generator=g), dim=1)
        k = F.normalize(torch.randn(6, 32, h, w, generator=g), dim=1)
        cq, ck = _coords(6, g), _coords(6, g)
        ours, theirs = float(pixpro_loss(q, k, cq, ck, ratio)), float(official.regression_loss(q, k, cq, ck, ratio))
        rows.append((f"loss, {h}x{w} map, pos_ratio {ratio}", ours, abs(ours - theirs), LOSS_TOL))

    torch.manual_seed(0)
    model = PixPro(a.model, in_chans=3, proj_dim=64, total_steps=10, momentum=0.9)
    with torch.no_grad():   # perturb with both signs, so no weight sits at its initial value
        for p in [*model.parameters(), *model.buffers()]:
            if p.is_floating_point():
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
        for po, pt in zip([*model.encoder.parameters(), *model.projector.parameters()],
                          [*model.encoder_target.parameters(), *model.projector_target.parameters()], strict=True):
            pt.copy_(po + torch.randn(po.shape, generator=g) * 0.02)   # the target away from the online weights
    model.train()
    ns = _namespace(official, model, steps_done=3)

    # the propagation module
    feat = torch.randn(2, 64, 7, 7, generator=g)
    with torch.no_grad():
        y = model.propagation(feat)
        rows.append(("pixel propagation (p 2, 1x1 conv value transform)", float(y.abs().max()),
                     float((y - ns.featprop(feat)).abs().max()), EXACT))

    # one whole training forward: both views, the momentum step at update 3 of 10, the symmetric loss
    size = 224
    v1, v2 = torch.randn(2, 3, size, size, generator=g), torch.randn(2, 3, size, size, generator=g)
    c1, c2 = _coords(2, g), _coords(2, g)
    model.updates.fill_(3)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ours = model(v1, v2, c1, c2)
    ours_target = [p.clone() for p in model.encoder_target.parameters()]
    model.load_state_dict(state)
    theirs = ns.forward(v1, v2, c1, c2)
    ours, theirs = ours.detach(), theirs.detach()
    rows.append((f"forward loss ({a.model}, two {size}x{size} views)", float(ours), abs(float(ours) - float(theirs)),
                 LOSS_TOL))
    rows.append(("momentum branch after the step (its weights)", max(float(p.abs().max()) for p in ours_target),
                 max(float((p - q).abs().max()) for p, q in zip(ours_target, model.encoder_target.parameters(),
                                                                 strict=True)), EXACT))
    ok = all(d <= tol * max(abs(v), 1.0) for _, v, d, tol in rows)
    commit = subprocess.run(["git", "-C", str(a.checkout), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    lines = ["# PixPro against the official code", "",
             f"Command: `python benchmarks/pixpro_parity.py --checkout PATH --model {a.model}`, PATH a checkout of "
             f"github.com/zdaxie/PixPro at {commit}. float64, torch {torch.__version__}, {cpu_name()}.", "",
             "The official functions run with our modules in their attributes' places, on the same weights "
             "(perturbed with both signs, the momentum branch away from the online one), views and crops.", "",
             "| what | largest value | max abs difference | allowed (relative) |", "|---|---:|---:|---:|",
             *[f"| {n} | {v:.4g} | {d:.2e} | {t:.0e} |" for n, v, d, t in rows], "",
             f"Result: {'equal' if ok else 'NOT EQUAL'}. The losses are allowed 1e-7 relative: the official positive "
             "mask is float32 (`.float()`), so the 1e-6 it adds to each image's pair count is lost to float32 "
             "rounding (counts of 8 or more), while ours adds it in the features' dtype (float64 here): the "
             "losses differ by about 1e-6 / count, relative. In float32 training both round it away alike.", ""]
    print("\n".join(lines))
    if a.out:
        a.out.write_text("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
