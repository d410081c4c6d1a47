"""Try torch.export and ONNX (checked with onnxruntime) on every operator of convscope.ops, in its deploy form, and
write the operator section of docs/export.md.

    python tools/export_ops.py            # every operator (about two minutes on 2 cores)

Each name in `convscope.ops.__all__` gets a row. A module is built small, with seeded random parameters (and
BatchNorm statistics), turned into its deploy form (`OPERATORS[name].transforms`: "materialize" for the
generated kernels of TVConv, SGConv and DCLS, "reparameterize" / "prepare" where they apply), and exported like
a model (`convscope.deploy.export.check_module`: torch.export's program against eager, and onnxruntime against
PyTorch, both within 1e-4 of the output's largest magnitude). A function is exported through a one-line module
that calls it on tensor inputs; outputs that are tuples or lists are flattened and concatenated into one tensor.
A name that cannot be exported at all has `reason` set instead of a builder, and its row says why.
tests/deploy/test_export_ops.py re-checks every row against a fresh run.
"""
from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "export.md"
BEGIN, END = "<!-- OPERATOR EXPORT BEGIN (python tools/export_ops.py) -->", "<!-- OPERATOR EXPORT END -->"
HEADERS = ("operator", "deploy form", "torch.export", "ONNX", "onnxruntime vs PyTorch", "inputs", "reason (when not)")


@dataclass(frozen=True)
class OpSpec:
    build: Callable | None = None  # () -> (module, inputs tuple)
    transforms: tuple[str, ...] = ()
    reason: str = ""  # why it is not exported (build is None)


def _torch():
    sys.path.insert(0, str(ROOT / "src"))
    import torch
    return torch


def _flat(outs):
    """One tensor from a tensor or a (nested) tuple / list of them: each flattened past the batch axis, joined."""
    torch = _torch()
    if isinstance(outs, torch.Tensor):
        return outs
    return torch.cat([_flat(o).flatten(1) for o in outs], 1)


def _wrap(fn: Callable):
    """A module whose forward is `fn(*inputs)` with its outputs flattened into one tensor."""
    torch = _torch()

    class Call(torch.nn.Module):
        def forward(self, *xs):
            return _flat(fn(*xs))

    return Call()


def _randomised(module, seed: int = 0):
    """Seeded random parameters (N(0, 0.5^2) added to the initial values, so zero-initialised offsets and gates
    do something) and BatchNorm statistics; eval mode."""
    torch = _torch()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g) / max(1.0, (p[0].numel() if p.dim() > 1 else 1)) ** 0.5)
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return module.eval()


def _x(*shape: int, seed: int = 1):
    torch = _torch()
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _specs() -> dict[str, OpSpec]:
    _torch()
    from convscope import ops
    from convscope.ops import wavelet

    def module(factory, *shapes, transforms=()):
        return OpSpec(lambda: (_randomised(factory()), tuple(_x(*s, seed=i + 1) for i, s in enumerate(shapes))),
                      transforms)

    def owner(factory, call, *shapes, transforms=()):
        def build():
            m = _randomised(factory())
            return _wrap_owner(m, call), tuple(_x(*s, seed=i + 1) for i, s in enumerate(shapes))
        return OpSpec(build, transforms)

    def function(fn, *shapes):
        return OpSpec(lambda: (_wrap(fn), tuple(_x(*s, seed=i + 1) for i, s in enumerate(shapes))))

    return {
        "ASPP": module(lambda: ops.ASPP(8, 8, rates=(2, 4)), (1, 8, 12, 12)),
        "ASPPPooling": module(lambda: ops.ASPPPooling(8, 8), (1, 8, 12, 12)),
        "AddCoords": module(lambda: ops.AddCoords(with_r=True), (1, 4, 8, 10)),
        "AtrousConv2d": module(lambda: ops.AtrousConv2d(8, 8, 3, rate=2), (1, 8, 12, 12)),
        "Conv2Plus1d": module(lambda: ops.Conv2Plus1d(8, 8), (1, 8, 4, 8, 8)),
        "ConvGLU": module(lambda: ops.ConvGLU(8), (1, 8, 8, 8)),
        "CoordConv2d": module(lambda: ops.CoordConv2d(8, 8, 3, padding=1, with_r=True), (1, 8, 8, 10)),
        "Dcls2d": module(lambda: ops.Dcls2d(8, 8, kernel_count=9, dilated_kernel_size=7, groups=8), (1, 8, 12, 12),
                         transforms=("materialize",)),
        "DeformConv2d": module(lambda: ops.DeformConv2d(8, 8, 3, groups=8, modulated=True), (1, 8, 10, 10)),
        "ESPCN": module(lambda: ops.ESPCN(3, 1), (1, 1, 8, 8)),
        "HaarDWT2d": owner(lambda: ops.HaarDWT2d(2), lambda m, x: m(x), (1, 4, 8, 12)),  # (LL, [highs])
        "HaarIDWT2d": owner(lambda: ops.HaarIDWT2d(), lambda m, ll, h: m(ll, [h]), (1, 4, 4, 6), (1, 4, 3, 4, 6)),
        "IntegratedBatchNorm": owner(lambda: ops.IntegratedBatchNorm(8), lambda m, a, b: m([a, b]),
                                     (1, 8, 8, 8), (1, 8, 4, 4)),
        "OneWayConv2d": module(lambda: ops.OneWayConv2d(8, 8, 3, rank=6), (1, 8, 8, 8)),
        "PHMConv2d": module(lambda: ops.PHMConv2d(8, 16, 3, n=4, padding=1), (1, 8, 8, 8)),
        "PyramidConv": owner(lambda: ops.PyramidConv(8, 8), lambda m, a, b, c: m([a, b, c]),
                             (1, 8, 16, 16), (1, 8, 8, 8), (1, 8, 4, 4)),
        "SGConv1d": module(lambda: ops.SGConv1d(6, kernel_dim=4, n_scales=3), (1, 6, 32),
                           transforms=("materialize",)),
        "SGConv2d": module(lambda: ops.SGConv2d(8, kernel_dim=2, n_scales=3), (1, 8, 12, 12),
                           transforms=("materialize",)),
        "SeparableConv3d": module(lambda: ops.SeparableConv3d(8, 8), (1, 8, 4, 8, 8)),
        "SeparableConv4d": module(lambda: ops.SeparableConv4d(4, 4), (1, 4, 4, 4, 4, 4)),
        "SpatialMessagePassing": module(lambda: ops.SpatialMessagePassing(8, 3), (1, 8, 8, 8)),
        "SubPixelConv2d": module(lambda: ops.SubPixelConv2d(8, 3, 2), (1, 8, 8, 8)),
        "TVConv": module(lambda: ops.TVConv(8, (8, 10)), (1, 8, 8, 10), transforms=("materialize",)),
        "WeightedConv2d": module(lambda: ops.WeightedConv2d(8, 8, (0.5, 0.75)), (1, 8, 8, 8)),
        "conv4d": function(ops.conv4d, (1, 4, 4, 4, 4, 4), (4, 4, 3, 3, 3, 3)),
        "conv_orthogonality": function(ops.conv_orthogonality, (8, 8, 3, 3)),
        "coordinate_channels": function(lambda x: ops.coordinate_channels(x.shape[-2], x.shape[-1], True)[None] * x,
                                        (1, 3, 8, 10)),
        "deform_conv2d": function(lambda x, off, w: ops.deform_conv2d(x, off, w, padding=1),
                                  (1, 4, 8, 8), (1, 18, 8, 8), (6, 4, 3, 3)),
        "density_profile": OpSpec(reason="no tensor input: builds WeightedConv2d's fixed density matrix from Python "
                                         "numbers at construction; it is a constant of WeightedConv2d's graph (row "
                                         "above)"),
        "haar_dwt2d": function(wavelet.haar_dwt2d, (1, 4, 8, 12)),
        "haar_idwt2d": function(wavelet.haar_idwt2d, (1, 4, 4, 6), (1, 4, 3, 4, 6)),
        "orthogonality_penalty": OpSpec(reason="a training-time regulariser: a sum over the parameters of a model "
                                               "given as a Python object, with no input tensor; its per-layer term "
                                               "`conv_orthogonality` exports (row above)"),
        "separable_full_kernel": function(lambda a, b, c: ops.separable_full_kernel([a, b, c]),
                                          (4, 4, 3), (4, 3), (4, 3)),
    }


def _wrap_owner(m, call: Callable):
    """A module owning `m` (so its parameters and buffers are the graph's) whose forward is call(m, *inputs)."""
    torch = _torch()

    class Owner(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.op = m

        def forward(self, *xs):
            return _flat(call(self.op, *xs))

    return Owner().eval()


OPERATORS_CACHE: dict[str, OpSpec] = {}


def operators() -> dict[str, OpSpec]:
    if not OPERATORS_CACHE:
        OPERATORS_CACHE.update(_specs())
    return OPERATORS_CACHE


def run(name: str):
    """The ExportResult of operator `name` in its deploy form, or None for one that is not exported (reason)."""
    from convscope.deploy import transform
    from convscope.deploy.export import check_module
    spec = operators()[name]
    if spec.build is None:
        return None
    model, inputs = spec.build()
    if spec.transforms:
        model = transform(model, *spec.transforms)
    return check_module(model, inputs, name)


def row(name: str, r) -> list[str]:
    spec = operators()[name]
    form = " + ".join(spec.transforms) if spec.transforms else "as built"
    if r is None:
        return [f"`{name}`", "-", "not exported", "not exported", "-", "-", spec.reason]
    reason = "; ".join(x for x in (f"torch.export: {r.torch_export_error}" if r.torch_export_error else "",
                                   f"ONNX: {r.onnx_error}" if r.onnx_error else "") if x)
    reason = re.sub(r"\s+", " ", reason).replace("|", "/")
    err = "-" if r.onnx_rel_err is None else f"{r.onnx_rel_err:.1e}"
    shapes = ", ".join("x".join(map(str, t.shape)) for t in operators()[name].build()[1])
    return [f"`{name}`", form, "yes" if r.torch_export else "**no**", "yes" if r.onnx else "**no**", err, shapes,
            reason]


def read_rows(text: str) -> dict[str, list[str]]:
    if BEGIN not in text:
        return {}
    body = text.split(BEGIN, 1)[1].split(END, 1)[0]
    rows = {}
    for line in body.strip().splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0].strip("`")] = cells
    return rows


def section(rows: dict[str, list[str]]) -> str:
    from convscope.utils import markdown_table
    names = sorted(rows, key=str.lower)
    both = sum(rows[n][2] == "yes" and rows[n][3] == "yes" for n in names)
    skipped = sum(rows[n][2] == "not exported" for n in names)
    return (f"## Operators\n\nEvery name in `convscope.ops`, built small with random parameters, in its deploy form "
            f"(`materialize` for generated kernels), exported with torch.export and ONNX (onnxruntime within 1e-4 "
            f"of PyTorch): {both} of {len(names)} export both ways, {skipped} are not tensor operators (the row "
            f"says why). A function is exported through a module that calls it. Generated by "
            f"`python tools/export_ops.py`; tests/deploy/test_export_ops.py re-checks every row.\n\n"
            f"{BEGIN}\n{markdown_table(HEADERS, [rows[n] for n in names])}\n{END}\n")


def write(rows: dict[str, list[str]], doc: Path = DOC) -> None:
    from convscope.files import atomic_write_text
    text = doc.read_text()
    new = section(rows)
    if BEGIN in text:
        head = text.split("## Operators\n", 1)[0]
        tail = text.split(END, 1)[1].lstrip("\n")
        text = head + new + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + new
    atomic_write_text(doc, text)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(DOC))
    args = p.parse_args()
    torch = _torch()
    torch.set_num_threads(1)
    from convscope import ops
    missing = sorted(set(ops.__all__) - set(operators()))
    if missing:
        print(f"no export spec for {missing}: add them to OPERATORS in tools/export_ops.py", file=sys.stderr)
        return 2
    rows = {}
    for name in ops.__all__:
        r = run(name)
        rows[name] = row(name, r)
        print(" | ".join(rows[name]), flush=True)
    write(rows, Path(args.out))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
