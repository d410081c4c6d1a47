"""Export for deployment: `torch.export` (an ExportedProgram, .pt2) and ONNX (checked with onnxruntime).

`export_onnx(model, x, path)` writes an ONNX file with torch's exporter (the torch.export-based one), and
`check_onnx` runs it in onnxruntime against PyTorch (max |difference| / max |PyTorch output|, 1e-4 is the bar).
`export_check(name)` builds a registered model and tries both, returning an `ExportResult` with the error of each
path that fails: tools/export_table.py writes one row per registered model to docs/export.md from it.

ONNX needs the `deploy` extra: `pip install "convscope[deploy]"` (onnx, onnxruntime, onnxscript).
"""
from __future__ import annotations

import contextlib
import time
import traceback
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

EXTRA_HINT = 'ONNX export needs onnx, onnxscript and onnxruntime: pip install "convscope[deploy]"'
ONNX_TOL = 1e-4


def _require_onnx():
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ImportError(f"{EXTRA_HINT} ({e})") from e
    return onnxruntime


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """`model` in eval mode inside the block; every module's own train/eval flag is restored after it."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in flags:
            m.training = training


def export_program(model: nn.Module, x: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.export.ExportedProgram:
    """torch.export of `model` in eval mode at the shape of `x` (one tensor or a tuple of inputs; non-strict); the
    caller's model keeps its own mode."""
    with warnings.catch_warnings(), eval_mode(model):
        warnings.simplefilter("ignore")
        return torch.export.export(model, x if isinstance(x, tuple) else (x,), strict=False)


def export_onnx(model: nn.Module, x: torch.Tensor | tuple[torch.Tensor, ...], path: str | Path, *,
                opset: int = 18) -> Path:
    """Write the ONNX model of `model` at the shape of `x` to `path` (torch.onnx.export, dynamo path); models over
    the 2 GB protobuf limit keep their weights in external data files beside it. The model is exported in eval
    mode and keeps its own mode."""
    _require_onnx()
    import logging
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    big = sum(p.numel() * p.element_size() for p in model.parameters()) > 1.8 * 2 ** 30
    with warnings.catch_warnings(), eval_mode(model):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, x if isinstance(x, tuple) else (x,), dynamo=True,
                                    opset_version=opset, verbose=False,
                                    optimize=True)
        program.save(str(path), external_data=big)
    return path


def run_onnx(path: str | Path, x: torch.Tensor | tuple[torch.Tensor, ...], threads: int | None = None) -> torch.Tensor:
    """The first output of the ONNX model at `path` on `x` (one tensor, or a tuple: one per graph input)."""
    ort = _require_onnx()
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    xs = x if isinstance(x, tuple) else (x,)
    out = sess.run(None, {i.name: t.numpy() for i, t in zip(sess.get_inputs(), xs, strict=False)})[0]
    return torch.from_numpy(out)


def check_onnx(model: nn.Module, path: str | Path, x: torch.Tensor, threads: int | None = None) -> float:
    """max |onnxruntime - PyTorch| / max |PyTorch| on `x` (PyTorch in eval mode; the model keeps its own mode)."""
    xs = x if isinstance(x, tuple) else (x,)
    with torch.no_grad(), eval_mode(model):
        want = model(*xs)
    got = run_onnx(path, x, threads)
    return ((got - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()


def _reason(e: BaseException) -> str:
    """One line naming the failure: the exception type and the first line of its message; for the ONNX exporter's
    wrapping errors (ConversionError, ...: "Failed to convert ... step 3/3"), the innermost cause's."""
    import re
    while e.__cause__ is not None and type(e).__name__ in ("ConversionError", "TorchExportError", "OnnxExporterError"):
        e = e.__cause__
    msg = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().splitlines()
    first = next((line for line in msg if line.strip()), "")
    return f"{type(e).__name__}: {first[:320]}"


@dataclass
class ExportResult:
    model: str
    input_shape: tuple[int, ...]
    torch_export: bool = False
    torch_export_error: str = ""
    onnx: bool = False
    onnx_error: str = ""
    onnx_rel_err: float | None = None
    onnx_mb: float | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.torch_export and self.onnx


def cheap_random_model(name: str, seed: int = 0, **kwargs: Any) -> nn.Module:
    """`name` (built with `kwargs`) with random weights, skipping the (slow, for the 300M-parameter variants) init:
    built on the meta device, materialised, weights N(0, 1/fan_in), vectors N(0, 0.1) (BatchNorm variances 1, norm
    weights 1 + N(0, 0.1)). Models with integer buffers (index tables) are built normally."""
    from ..models import create_model
    with torch.device("meta"):
        model = create_model(name, **kwargs)
    if any(not b.is_floating_point() for n, b in model.named_buffers() if "num_batches" not in n):
        torch.manual_seed(seed)
        return create_model(name, **kwargs).eval()
    model = model.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, t in list(model.named_parameters()) + list(model.named_buffers()):
            if not t.is_floating_point():
                continue
            leaf = n.rsplit(".", 1)[-1]
            if t.ndim >= 2:
                t.copy_(torch.randn(t.shape, generator=g) / max(t[0].numel(), 1) ** 0.5)
            elif leaf == "running_var":
                t.fill_(1.0)
            elif leaf in ("weight", "gamma") or "scale" in leaf:
                t.copy_(1 + 0.1 * torch.randn(t.shape, generator=g))
            else:
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
    return model.eval()


def export_check(name: str, *, batch: int = 1, size: tuple[int, int] | None = None, deploy_form: bool = True,
                 seed: int = 0, threads: int | None = None, model_kwargs: Mapping[str, Any] | None = None
                 ) -> ExportResult:
    """Build `name` (random init, with `model_kwargs`; the inference form when `deploy_form`), and try torch.export
    and ONNX at (batch, C, H, W) = the card's input size (or `size`); ONNX output checked against PyTorch with
    onnxruntime."""
    from ..layers.fold import prepare_for_inference_
    from ..models import model_card
    card = model_card(name)
    model = cheap_random_model(name, seed, **(model_kwargs or {}))
    if deploy_form:
        prepare_for_inference_(model)
    c, h, w = card.input_size
    if size is not None:
        h, w = size
    x = torch.randn(batch, c, h, w, generator=torch.Generator().manual_seed(seed))
    return check_module(model, x, name, threads=threads)


def check_module(model: nn.Module, x: torch.Tensor | tuple[torch.Tensor, ...], name: str = "",
                 threads: int | None = None) -> ExportResult:
    """Try torch.export (program output vs eager within ONNX_TOL) and ONNX (onnxruntime vs PyTorch within
    ONNX_TOL) on `model` at the inputs `x` (one tensor, or a tuple: one per forward argument; one output tensor).
    Every failure is recorded with its one-line reason. Everything runs in eval mode; the model keeps its own."""
    with eval_mode(model):
        return _check_module(model, x, name, threads)


def _check_module(model: nn.Module, x: torch.Tensor | tuple[torch.Tensor, ...], name: str,
                  threads: int | None) -> ExportResult:
    xs = x if isinstance(x, tuple) else (x,)
    r = ExportResult(name, tuple(xs[0].shape))
    t0 = time.perf_counter()
    try:
        ep = export_program(model, x)
        with torch.no_grad():
            got, want = ep.module()(*xs), model(*xs)
        err = ((got - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()
        if not err <= ONNX_TOL:
            raise AssertionError(f"exported program differs from eager by {err:.2e}")
        r.torch_export = True
    except Exception as e:  # noqa: BLE001 - every failure is recorded with its reason
        r.torch_export_error = _reason(e)
    try:
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            path = export_onnx(model, x, Path(tmp) / f"{name or 'model'}.onnx")
            r.onnx_mb = sum(f.stat().st_size for f in Path(tmp).iterdir()) / 2 ** 20
            r.onnx_rel_err = check_onnx(model, path, x, threads)
            if not r.onnx_rel_err <= ONNX_TOL:
                raise AssertionError(f"onnxruntime output differs from PyTorch by {r.onnx_rel_err:.2e} (bar "
                                     f"{ONNX_TOL}){conditioning_diagnosis(model, xs, r.onnx_rel_err)}")
        r.onnx = True
    except ImportError:
        raise
    except Exception as e:  # noqa: BLE001
        r.onnx_error = _reason(e)
        r.extra["onnx_traceback"] = traceback.format_exc(limit=3)
    r.seconds = time.perf_counter() - t0
    return r


def conditioning_diagnosis(model: nn.Module, xs: tuple[torch.Tensor, ...], onnx_err: float, seed: int = 1,
                           eps: float = 1e-6) -> str:
    """Whether an onnxruntime / PyTorch difference is an export error or the network's float32 conditioning: the
    first input is perturbed by `eps` (relative; a few float32 ulps) and PyTorch run again. When that moves the
    output as much as onnxruntime differs, the network amplifies rounding (a random-weight network can be
    chaotic: UniRepLKNet's layer scales of ~1, LSNet's unscaled branches) and any other float32 implementation of
    the same graph differs as much."""
    g = torch.Generator().manual_seed(seed)
    try:
        with torch.no_grad():
            want = model(*xs)
            x0 = xs[0] * (1 + eps * torch.randn(xs[0].shape, generator=g))
            moved = ((model(x0, *xs[1:]) - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()
    except Exception as e:  # noqa: BLE001 - the diagnosis is best effort; the failure stands either way
        return f"; no conditioning check ({_reason(e)})"
    verdict = ("ill-conditioned in float32, not an export error" if moved >= 0.1 * onnx_err
               else "an export error: the network is not that sensitive")
    return f"; a {eps:g} relative input perturbation moves PyTorch's output by {moved:.1e} ({verdict})"
