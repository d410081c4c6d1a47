"""int8 post-training quantisation (and quantisation-aware fine-tuning) for the CPU, through PyTorch's maintained
path: torchao's PT2E flow with the x86 Inductor quantizer.

The model is captured with `torch.export` at a fixed input shape, annotated by `X86InductorQuantizer` (int8
activations per tensor, int8 weights per output channel, symmetric), calibrated on batches from a data loader,
and converted: each quantised conv / linear reads an int8 weight through `dequantize_per_channel`, between
`quantize` / `dequantize` pairs on its activations. Eagerly that graph runs in float (the reference form, for
accuracy); `torch.compile` (Inductor, with freezing) lowers the patterns to int8 oneDNN kernels, which is where
the speed comes from (VNNI, or AMX where present).

`quantize_int8` returns the quantised module with a `QuantReport`: every layer left in float with the reason, and
the weight storage (int8 weights against the fp32 weights they replace, from the tensors themselves). `qat_int8`
fine-tunes with fake quantisation (straight-through gradients) before converting, for when PTQ loses more than
the accuracy budget.

Needs the `deploy` extra (torchao): `pip install "convscope[deploy]"`.
"""
from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

EXTRA_HINT = 'int8 quantisation needs torchao: pip install "convscope[deploy]" (or pip install torchao)'

# why a kind of layer stays in float under the x86 Inductor quantizer
FLOAT_REASONS = {
    "LayerNorm": "normalisation: no int8 LayerNorm kernel; runs in fp32 between dequantize and quantize",
    "LayerNorm2d": "normalisation: no int8 LayerNorm kernel; runs in fp32 between dequantize and quantize",
    "GroupNorm": "normalisation: no int8 GroupNorm kernel; runs in fp32",
    "BatchNorm2d": "BatchNorm not folded (call prepare_for_inference first); runs in fp32",
    "GELU": "activation: fused into the preceding int8 conv/linear by Inductor where it follows one, else fp32",
    "ReLU": "activation: fused into the preceding int8 conv/linear by Inductor",
    "StarReLU": "activation with a learned scale and bias: elementwise fp32",
    "GRN": "global response normalisation (a reduction over H x W): elementwise fp32",
    "Softmax": "softmax: fp32",
    "Dropout": "identity in eval mode",
    "Identity": "identity",
    "LayerScale": "per-channel scale on the residual branch: elementwise fp32 (Inductor fuses it into the add)",
    "Scale": "per-channel scale on the residual branch: elementwise fp32 (Inductor fuses it into the add)",
    "SquaredReLU": "activation: elementwise fp32",
}
_DEFAULT_REASON = "no int8 pattern in the x86 Inductor quantizer for this op; runs in fp32"
_MATMUL_OPS = ("scaled_dot_product_attention", "matmul", "bmm", "baddbmm", "einsum", "fft")


def _require_torchao():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
            from torchao.quantization.pt2e import quantize_pt2e
    except ImportError as e:
        raise ImportError(f"{EXTRA_HINT} ({e})") from e
    return quantize_pt2e, xiq


def available() -> bool:
    try:
        _require_torchao()
        return True
    except ImportError:
        return False


@dataclass
class LayerStatus:
    name: str
    kind: str
    int8: bool
    reason: str = ""


@dataclass
class QuantReport:
    """What was quantised: per-layer status, and the weight storage of the quantised layers."""

    layers: list[LayerStatus] = field(default_factory=list)
    int8_weight_bytes: int = 0  # the int8 weights
    fp32_weight_bytes: int = 0  # the fp32 weights they replace
    qparam_bytes: int = 0  # their per-channel scales and zero points
    float_param_bytes: int = 0  # everything left in float (norms, biases, layer scales, float layers)
    calibration_batches: int = 0
    method: str = "pt2e x86_inductor"

    @property
    def weight_ratio(self) -> float:
        """fp32 bytes / int8 bytes of the quantised weights (4.0 for int8 against fp32)."""
        return self.fp32_weight_bytes / max(self.int8_weight_bytes, 1)

    @property
    def total_ratio(self) -> float:
        """fp32 model bytes / quantised model bytes, everything counted (scales, zero points, float parts)."""
        before = self.fp32_weight_bytes + self.float_param_bytes
        return before / max(self.int8_weight_bytes + self.qparam_bytes + self.float_param_bytes, 1)

    def left_in_float(self) -> list[LayerStatus]:
        return [layer for layer in self.layers if not layer.int8]

    def summary(self) -> str:
        q = [layer for layer in self.layers if layer.int8]
        lines = [f"int8 ({self.method}): {len(q)} conv/linear layers quantised (weights per channel), "
                 f"{self.calibration_batches} calibration batches",
                 f"quantised weights: {self.fp32_weight_bytes / 2**20:.2f} MiB fp32 -> "
                 f"{self.int8_weight_bytes / 2**20:.2f} MiB int8 ({self.weight_ratio:.2f}x smaller; with scales, zero "
                 f"points and the float parts the whole model is {self.total_ratio:.2f}x smaller)"]
        floats = self.left_in_float()
        if floats:
            lines.append(f"left in float ({len(floats)}):")
            by_reason: dict[tuple[str, str], list[str]] = {}
            for layer in floats:
                by_reason.setdefault((layer.kind, layer.reason), []).append(layer.name)
            for (kind, reason), names in by_reason.items():
                shown = ", ".join(names[:4]) + (f", ... ({len(names)} in all)" if len(names) > 4 else "")
                lines.append(f"  {kind}: {reason}  [{shown}]")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return dict(method=self.method, calibration_batches=self.calibration_batches,
                    int8_weight_bytes=self.int8_weight_bytes, fp32_weight_bytes=self.fp32_weight_bytes,
                    qparam_bytes=self.qparam_bytes, float_param_bytes=self.float_param_bytes,
                    weight_ratio=self.weight_ratio, total_ratio=self.total_ratio,
                    left_in_float=[vars(layer) for layer in self.left_in_float()],
                    int8_layers=[layer.name for layer in self.layers if layer.int8])


def _inputs(batch: Any) -> torch.Tensor:
    """The image tensor of a loader item: a tensor, or the first element of an (images, labels) pair."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    if isinstance(batch, dict) and "image" in batch:
        return batch["image"]
    raise ValueError(f"calibration batches must be tensors or (images, labels) pairs; got {type(batch).__name__}")


def _fit(x: torch.Tensor, batch: int) -> torch.Tensor:
    """The exported graph has a fixed batch size: trim or repeat `x` to it."""
    if x.shape[0] == batch:
        return x
    if x.shape[0] > batch:
        return x[:batch]
    reps = -(-batch // x.shape[0])
    return x.repeat(reps, *([1] * (x.ndim - 1)))[:batch]


def _export(model: nn.Module, example: torch.Tensor) -> torch.fx.GraphModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.export.export(model, (example,), strict=False).module()


def _module_of(node) -> tuple[str, str] | None:
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    path, cls = list(stack.values())[-1]
    cls = cls.__name__ if isinstance(cls, type) else str(cls).rsplit(".", 1)[-1]
    return path, cls


def _clean(path: str) -> str:
    # export paths look like "L['self'].stages[0]" or "stages.0.blocks.1"; keep the dotted module name
    return path.replace("L['self'].", "").replace("[", ".").replace("]", "").replace("'", "")


def analyse(converted: torch.fx.GraphModule, original: nn.Module, calibration_batches: int = 0) -> QuantReport:
    """The per-layer status and the weight storage of a converted PT2E graph."""
    report = QuantReport(calibration_batches=calibration_batches)
    quantised: dict[str, str] = {}
    floating: dict[str, tuple[str, str]] = {}
    counted: set[int] = set()

    def attr(node):
        obj = converted
        for part in node.target.split("."):
            obj = getattr(obj, part)
        return obj

    for node in converted.graph.nodes:
        if node.op != "call_function":
            continue
        target = str(node.target)
        where = _module_of(node)
        name, cls = (_clean(where[0]), where[1]) if where else ("<functional>", "")
        if "conv2d" in target or "linear" in target or "conv1d" in target:
            w = node.args[1]
            if getattr(w, "op", None) == "call_function" and "dequantize_per_channel" in str(w.target):
                quantised[name] = cls
                q, scale, zp = w.args[0], w.args[1], w.args[2]
                for part, kind in ((q, "q"), (scale, "s"), (zp, "s")):
                    if getattr(part, "op", None) == "get_attr":
                        t = attr(part)
                        if id(t) in counted:
                            continue
                        counted.add(id(t))
                        if kind == "q":
                            report.int8_weight_bytes += t.numel() * t.element_size()
                            report.fp32_weight_bytes += t.numel() * 4
                        else:
                            report.qparam_bytes += t.numel() * t.element_size()
            else:
                floating[name] = (cls, "the quantizer left this conv/linear unannotated (input not quantisable "
                                       "as int8 here); runs in fp32")
        elif any(op in target for op in _MATMUL_OPS):
            floating.setdefault(f"{name}:{target.split('.')[1] if '.' in target else target}",
                                (cls or "functional", "activation x activation product (attention / mixing "
                                 "matrix): no int8 pattern in the x86 Inductor quantizer; fp32"))
    for node in converted.graph.nodes:  # float parameters: every get_attr not counted as a quantised weight
        if node.op == "get_attr":
            t = attr(node)
            if isinstance(t, torch.Tensor) and id(t) not in counted and t.is_floating_point():
                counted.add(id(t))
                report.float_param_bytes += t.numel() * t.element_size()
    for name, cls in quantised.items():
        report.layers.append(LayerStatus(name, cls, True))
    leaf_float = {}
    for name, m in original.named_modules():
        if next(m.children(), None) is not None or not name or name in quantised:
            continue
        cls = type(m).__name__
        if cls in ("Identity", "Dropout", "DropPath"):
            continue
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            leaf_float[name] = (cls, floating.get(name, (cls, "not reached by the exported forward"))[1])
        else:
            leaf_float[name] = (cls, FLOAT_REASONS.get(cls, _DEFAULT_REASON))
    for name, (cls, reason) in floating.items():
        if ":" in name:
            leaf_float[name] = (cls, reason)
    for name, (cls, reason) in leaf_float.items():
        report.layers.append(LayerStatus(name, cls, False, reason))
    return report


@dataclass
class Quantized:
    """A quantised model: `module` (the converted PT2E graph; eager = float reference arithmetic), its `report`,
    the fixed `input_shape` it was exported at."""

    module: torch.fx.GraphModule
    report: QuantReport
    input_shape: tuple[int, ...]

    def compiled(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The model lowered by Inductor (with freezing) to int8 oneDNN kernels: the fast form."""
        return compile_int8(self.module)


def compile_int8(module: nn.Module, **inductor: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """`module` under torch.compile with Inductor freezing, which constant-folds the weight dequantisation so the
    int8 kernels see int8 weights (and without which Inductor cannot lower the prepacked quantised convolutions).
    Freezing is switched on around each call, where the compile happens, and off again: a float model compiled
    later in the same process keeps its own settings. (Passing it as the compile's `options` is not the same:
    Inductor then fails on `onednn.qconv_prepack`.) `inductor`: more Inductor settings for the same span (for
    example max_autotune=True)."""
    import torch._inductor.config as cfg

    compiled = torch.compile(module, dynamic=False)

    def run(x: torch.Tensor) -> torch.Tensor:
        with cfg.patch(freezing=True, **inductor):
            return compiled(x)
    return run


def strip_unused_(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Drop parameters and buffers the graph no longer reads: after conversion the fp32 weights stay attached
    beside their int8 copies, which would make the saved model larger than the float one."""
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for key in list(gm.state_dict(keep_vars=True)):
        if key in used:
            continue
        owner_name, _, leaf = key.rpartition(".")
        owner = gm.get_submodule(owner_name) if owner_name else gm
        if leaf in owner._parameters:
            del owner._parameters[leaf]
        elif leaf in owner._buffers:
            del owner._buffers[leaf]
    gm.delete_all_unused_submodules()
    return gm


def _calibrate(prepared: nn.Module, loader: Iterable, batch: int, num_batches: int | None) -> int:
    n = 0
    with torch.no_grad():
        for item in itertools.islice(loader, num_batches):
            prepared(_fit(_inputs(item), batch))
            n += 1
    if n == 0:
        raise ValueError("the calibration loader gave no batches")
    return n


def quantize_int8(model: nn.Module, calibration: Iterable, example_input: torch.Tensor | None = None, *,
                  num_batches: int | None = 32) -> Quantized:
    """Post-training int8 quantisation (static, per-channel weights) of an eval-mode model, calibrated on up to
    `num_batches` batches of `calibration` (tensors or (images, labels) pairs). The model is exported at the shape
    of `example_input` (default: the first calibration batch); fold BatchNorms first (prepare_for_inference) so
    none stays in float."""
    quantize_pt2e, xiq = _require_torchao()
    model = model.eval()
    it = iter(calibration)
    first = _inputs(next(it))
    example = first if example_input is None else example_input
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = quantize_pt2e.prepare_pt2e(_export(model, example), quantizer)
        n = _calibrate(prepared, itertools.chain([first], it), example.shape[0], num_batches)
        converted = strip_unused_(quantize_pt2e.convert_pt2e(prepared))
    return Quantized(converted, analyse(converted, model, n), tuple(example.shape))


def qat_int8(model: nn.Module, train_loader: Iterable, example_input: torch.Tensor, *, steps: int = 100,
             lr: float = 1e-4, calibration: Iterable | None = None,
             loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> Quantized:
    """Quantisation-aware fine-tuning: fake-quantise weights and activations (straight-through gradients), train
    `steps` batches of (images, labels) from `train_loader` with AdamW at `lr`, then convert to int8.
    BatchNorms should be folded first (prepare_for_inference), so the fine-tuning sees the deploy form."""
    quantize_pt2e, xiq = _require_torchao()
    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train
    loss_fn = loss_fn or nn.functional.cross_entropy
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config(is_qat=True))
    batch = example_input.shape[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = quantize_pt2e.prepare_qat_pt2e(_export(model.train(), example_input), quantizer)
        move_exported_model_to_train(prepared)
        opt = torch.optim.AdamW([p for p in prepared.parameters() if p.requires_grad], lr=lr)
        n = 0
        for item in itertools.islice(itertools.cycle(train_loader) if steps else (), steps):
            x, y = item
            x, y = _fit(x, batch), _fit(y, batch)
            opt.zero_grad(set_to_none=True)
            loss_fn(prepared(x), y).backward()
            opt.step()
            n += 1
        move_exported_model_to_eval(prepared)
        if calibration is not None:
            _calibrate(prepared, calibration, batch, 8)
        converted = strip_unused_(quantize_pt2e.convert_pt2e(prepared))
    model.eval()
    report = analyse(converted, model, 0)
    report.method = f"pt2e x86_inductor QAT ({n} steps)"
    return Quantized(converted, report, tuple(example_input.shape))


def save_int8(q: Quantized, path):
    """Write the quantised model as a torch.export program (.pt2): int8 weights on disk, loadable without convscope
    by `torch.export.load(path).module()`."""
    from pathlib import Path

    from ..files import atomic_path
    example = torch.zeros(q.input_shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(q.module, (example,), strict=False)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.export.save(program, f)
    return Path(path)


def archive_sizes(path) -> dict[str, int]:
    """Bytes of a saved .pt2 by part: 'weights' (the tensor data), 'program' (the serialised graph) and 'file'."""
    import os
    import zipfile
    sizes = dict(weights=0, program=0, file=os.path.getsize(path))
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            sizes["weights" if "/data/" in info.filename else "program"] += info.file_size
    return sizes


def load_int8(path) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.export.load(str(path)).module()
