"""The deploy optimiser: try the forms that can make a model faster on this machine, measure each, keep the fastest
within an accuracy budget, and write it with a JSON recipe that reproduces it.

Steps, in order, each tried on top of the best form so far (greedy) and kept only when it is faster (by more than
`min_gain`) and loses no more than `max_drop` top-1 points on the evaluation data:

    prepare        re-parameterisation + BatchNorm folding (exact)
    channels_last  NHWC memory format for model and input
    bf16           bf16 autocast (pays with AMX or AVX512-BF16; measured, never assumed)
    compile        torch.compile (Inductor)
    int8           PT2E int8 (torchao x86 Inductor quantizer), calibrated, compiled; replaces bf16
    int8_mixed     the int8 form compiled and run under bf16 autocast (torchao's int8-mixed-bf16): the quantised
                   convolutions and linears stay int8, the float ops between them (norms, GELU, softmax) run in
                   bf16; measured, kept only where it pays (on an AVX512-BF16 EPYC, 1.30x over int8 for
                   InceptionNeXt-T at batch 8, within noise for ConvNeXt-T, 0.96-1.04x at batch 1)
    threads        every intra-op thread count from 1 to the cores this process may use

and, only when asked for (not in the default `STEPS`):

    bf16_freeze    bf16 autocast under torch.compile with Inductor freezing (weights constant-folded to bf16)

Each measurement: median latency and throughput at the batch size (convscope.analysis.timing.measure), the peak
extra memory of a step, and top-1 on the data (when given; otherwise the largest relative output difference from
the fp32 eager model on random inputs); given this machine's ceilings (`peaks`), also the form's roof
(`convscope.analysis.waterline.form_roof`: each layer priced at the peak of the dtype it runs in) and its
"% of roof" = roof / measured latency. `Recipe` is the JSON form: the model source, the input, and the chosen
settings; `apply_recipe` rebuilds the form from it (the `convscope deploy` command).
"""
from __future__ import annotations

import contextlib
import copy
import itertools
import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..analysis.hardware import HardwarePeaks
from ..layers.fold import prepare_for_inference_
from ..limits import MAX_INPUT_ELEMENTS, MAX_SIDE, MAX_THREADS
from ..models.source import load_source, save_model_file, source_meta
from ..utils import text_table, threads_set
from .machine import cpu_isa

STEPS = ("prepare", "channels_last", "bf16", "compile", "int8", "int8_mixed", "threads")
OPTIONAL_STEPS = ("bf16_freeze",)  # tried only when named in `steps`
ALL_STEPS = STEPS + OPTIONAL_STEPS


@dataclass(frozen=True)
class Form:
    """The settings of one deploy form."""

    prepare: bool = False
    channels_last: bool = False
    dtype: str = "fp32"  # fp32 | bf16 (autocast) | int8 (PT2E, compiled)
    compile: bool = False
    freeze: bool = False  # with compile: Inductor freezing (weights folded as constants; inference only)
    threads: int = 1
    qat_steps: int = 0  # int8 only: quantisation-aware fine-tuning steps before converting (0: PTQ)
    mixed_bf16: bool = False  # int8 only: compiled and run under bf16 autocast (int8-mixed-bf16)

    def describe(self) -> str:
        parts = ["prepared" if self.prepare else "as trained"] + ["channels_last"] * self.channels_last
        parts += [self.dtype + (" autocast" if self.dtype == "bf16" else "") + " mixed bf16" * self.mixed_bf16 +
                  (f" QAT {self.qat_steps} steps" if self.qat_steps else "")]
        parts += [f"torch.compile{'(freeze)' * self.freeze}"] * (self.compile and self.dtype != "int8")
        parts += [f"{self.threads} thr"]
        return ", ".join(parts)


@dataclass
class Measurement:
    form: Form
    median_ms: float
    throughput: float
    peak_mib: float | None
    top1: float | None = None
    out_rel_err: float | None = None
    build_s: float = 0.0
    note: str = ""
    roof_ms: float | None = None  # the form's waterline bound on this machine (form_roof), when the peaks are known

    @property
    def roof_percent(self) -> float | None:
        """% of roof: roof latency / measured latency x 100 (None without a roof or a measured latency)."""
        if self.roof_ms is None or not math.isfinite(self.median_ms):
            return None
        return 100.0 * self.roof_ms / self.median_ms


FORM_DTYPES = ("fp32", "bf16", "int8")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_form(form: Any) -> None:
    """ValueError unless `form` is a Form's settings: known keys, each of its type and range."""
    if not isinstance(form, dict):
        raise ValueError(f"form must be an object of Form settings; got {form!r}")
    unknown = sorted(set(form) - set(Form.__dataclass_fields__))
    if unknown:
        raise ValueError(f"unknown form settings {unknown}")
    for key in ("prepare", "channels_last", "compile", "freeze", "mixed_bf16"):
        if not isinstance(form.get(key, False), bool):
            raise ValueError(f"form.{key} must be true or false; got {form[key]!r}")
    if form.get("freeze", False) and not form.get("compile", False):
        raise ValueError("form.freeze (Inductor freezing) needs form.compile to be true")
    if form.get("dtype", "fp32") not in FORM_DTYPES:
        raise ValueError(f"form.dtype must be one of {', '.join(FORM_DTYPES)}; got {form['dtype']!r}")
    if form.get("mixed_bf16", False) and form.get("dtype", "fp32") != "int8":
        raise ValueError("form.mixed_bf16 (int8-mixed-bf16) needs form.dtype to be int8")
    threads = form.get("threads", 1)
    if not _is_int(threads) or not 1 <= threads <= MAX_THREADS:
        raise ValueError(f"form.threads must be an integer in [1, {MAX_THREADS}]; got {threads!r}")
    if not _is_int(form.get("qat_steps", 0)) or form.get("qat_steps", 0) < 0:
        raise ValueError(f"form.qat_steps must be an integer >= 0; got {form['qat_steps']!r}")


def _check_input_size(size: Any) -> None:
    """ValueError unless `size` is (batch, C, H, W) of positive integers within the input limits."""
    if not isinstance(size, (list, tuple)) or len(size) != 4 or not all(_is_int(v) and v >= 1 for v in size):
        raise ValueError(f"input_size must be 4 positive integers (batch, C, H, W); got {size!r}")
    if max(size[2:]) > MAX_SIDE or math.prod(size) > MAX_INPUT_ELEMENTS:
        raise ValueError(f"input_size {list(size)} is larger than an input can be (sides at most {MAX_SIDE}, "
                         f"{MAX_INPUT_ELEMENTS} elements)")


def _check_measured(measured: Any) -> None:
    """ValueError unless `measured` holds finite numbers (or nulls), with a positive median_ms when present."""
    if not isinstance(measured, dict):
        raise ValueError(f"measured must be an object; got {measured!r}")
    for k, v in measured.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isfinite(v):
            raise ValueError(f"measured.{k} must be a finite number; got {v}")
    ms = measured.get("median_ms")
    if ms is not None and not (isinstance(ms, (int, float)) and ms > 0):
        raise ValueError(f"measured.median_ms must be a number > 0; got {ms!r}")


@dataclass
class Recipe:
    """What `convscope deploy` needs to rebuild a form: the source (a model name or a checkpoint), the input, the
    settings, and what the optimiser measured for it on which machine. Every field is checked when a recipe is
    made or read, before anything is built from it."""

    source: str
    input_size: tuple[int, int, int, int]
    form: dict[str, Any]
    data: str | None = None
    calibration_batches: int = 8
    measured: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)
    version: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source:
            raise ValueError(f"source must be a model name or a checkpoint path; got {self.source!r}")
        _check_input_size(self.input_size)
        self.input_size = tuple(self.input_size)
        _check_form(self.form)
        if self.data is not None and (not isinstance(self.data, str) or not self.data):
            raise ValueError(f"data must be a data set name or path, or null; got {self.data!r}")
        if not _is_int(self.calibration_batches) or self.calibration_batches < 1:
            raise ValueError(f"calibration_batches must be an integer >= 1; got {self.calibration_batches!r}")
        _check_measured(self.measured)
        if not isinstance(self.machine, dict):
            raise ValueError(f"machine must be an object; got {self.machine!r}")
        if self.version != 1:
            raise ValueError(f"version must be 1; got {self.version!r}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, allow_nan=False)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Recipe:
        """The recipe in file `path`, every field checked; a relative source path is taken from the recipe's own
        directory."""
        from ..files import read_json

        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"no recipe at {p}")
        d = read_json(p)
        try:
            if not isinstance(d, dict):
                raise ValueError("expected a JSON object")
            unknown = sorted(set(d) - set(cls.__dataclass_fields__))
            if unknown:
                raise ValueError(f"unknown fields {unknown}")
            recipe = cls(**d)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{p} is not a deploy recipe: {e}") from None
        beside = p.parent / recipe.source
        if not Path(recipe.source).is_absolute() and beside.exists():
            recipe.source = str(beside.resolve())
        return recipe


# -- the model, its data ---------------------------------------------------------------------------------------------
def eval_loader(info: dict[str, Any], data: str, batch: int, limit: int | None, split: str = "test") -> Iterable:
    """(images, labels) batches of `data` prepared as the checkpoint was trained (needs a checkpoint's meta)."""
    meta = info.get("meta")
    if meta is None:
        raise ValueError("--data needs a trained checkpoint (its classes and preprocessing); a bare model name has "
                         "neither")
    from ..data.loaders import Loader
    from ..data.open import open_dataset
    from ..data.transforms import EvalTransform
    ds = open_dataset(data, split, in_chans=meta["in_chans"], load_size=meta["load_size"][0],
                      classes=tuple(meta["class_names"])).dataset
    if limit is not None:
        ds = ds.subset(limit)
    tf = EvalTransform(meta["input_size"], meta["mean"], meta["std"], meta["crop_pct"])
    return Loader(ds, tf, batch, train=False, workers=0)


def _pad(x: torch.Tensor, batch: int) -> torch.Tensor:
    if x.shape[0] == batch:
        return x
    return torch.cat([x, x[:1].expand(batch - x.shape[0], *x.shape[1:])]) if x.shape[0] < batch else x[:batch]


# -- building and measuring a form -------------------------------------------------------------------------------------
def build_form(model: nn.Module, form: Form, example: torch.Tensor,
               calibration: Iterable | None = None, calibration_batches: int = 8) -> tuple[Callable, dict]:
    """A callable x -> logits running `model` in `form` at the shape of `example`, and what was built
    (`quant_report`, `module` for saving)."""
    m = copy.deepcopy(model).eval()
    if form.prepare:
        prepare_for_inference_(m)
    info: dict[str, Any] = {}
    fmt = torch.channels_last if form.channels_last else torch.contiguous_format
    if form.dtype == "int8":
        import warnings

        from .quantize import compile_int8, quantize_int8
        warnings.filterwarnings("ignore", message="To copy construct from a tensor")
        calib = calibration if calibration is not None else \
            [torch.randn(example.shape, generator=torch.Generator().manual_seed(i)) for i in range(2)]
        if form.qat_steps:
            from .quantize import qat_int8
            labelled = [b for b in calib if isinstance(b, (tuple, list)) and len(b) == 2]
            if not labelled:
                raise ValueError("QAT needs labelled batches (--data)")
            q = qat_int8(m, labelled, _pad(labelled[0][0], example.shape[0]), steps=form.qat_steps,
                         calibration=[b[0] for b in labelled[:calibration_batches]])
        else:
            calib = ((_pad(b[0] if isinstance(b, (tuple, list)) else b, example.shape[0])) for b in calib)
            q = quantize_int8(m, calib, example, num_batches=calibration_batches)
        info.update(quant_report=q.report, quantized=q)
        fn = compile_int8(q.module)

        def run(x):
            with torch.no_grad(), (torch.autocast("cpu", dtype=torch.bfloat16) if form.mixed_bf16
                                   else contextlib.nullcontext()):
                return fn(x.contiguous(memory_format=fmt)).float()
        return run, info
    if form.channels_last:
        m = m.to(memory_format=torch.channels_last)
    info["module"] = m
    fn = torch.compile(m, dynamic=False, options={"freezing": True} if form.freeze else None) if form.compile else m

    def run(x):
        with torch.inference_mode(), (torch.autocast("cpu", dtype=torch.bfloat16) if form.dtype == "bf16"
                                      else contextlib.nullcontext()):
            return fn(x.contiguous(memory_format=fmt)).float()
    return run, info


def _top1(run: Callable, loader: Iterable, batch: int) -> float:
    correct = n = 0
    for x, y in loader:
        k = x.shape[0]
        logits = run(_pad(x, batch))[:k]
        correct += int((logits.argmax(1) == y).sum())
        n += k
    return 100.0 * correct / max(n, 1)


def measure_form(model: nn.Module, form: Form, size: Sequence[int], *, loader: Iterable | None = None,
                 reference: tuple[torch.Tensor, torch.Tensor] | None = None, calibration: Iterable | None = None,
                 repeats: int = 10, max_time_s: float = 10.0) -> tuple[Measurement, dict]:
    import time

    from ..analysis.hardware import PeakMemory
    from ..analysis.timing import measure
    x = torch.randn(*size, generator=torch.Generator().manual_seed(0))
    with threads_set(form.threads):
        t0 = time.perf_counter()
        run, info = build_form(model, form, x, calibration)
        run(x)  # compiles, where it does
        build_s = time.perf_counter() - t0
        mem = PeakMemory(torch.device("cpu"))
        mem.start()
        stats = measure(lambda: run(x), warmup=2, repeats=repeats, max_time_s=max_time_s)
        peak = mem.stop()
        m = Measurement(form, stats.median_s * 1e3, size[0] / stats.median_s,
                        None if peak is None else peak / 2 ** 20, build_s=build_s)
        if loader is not None:
            m.top1 = _top1(run, loader, size[0])
        if reference is not None:
            rx, ry = reference
            got = run(rx).float()
            m.out_rel_err = ((got - ry).abs().max() / ry.abs().max()).item()
    return m, info


# -- the optimiser ---------------------------------------------------------------------------------------------------
@dataclass
class StepResult:
    step: str
    before: Measurement
    tried: list[Measurement]
    kept: Measurement
    why: str

    def table(self) -> str:
        rows = []
        base = self.before
        for m in [base] + self.tried:
            gain = base.median_ms / m.median_ms
            drop = None if m.top1 is None or base.top1 is None else base.top1 - m.top1
            roof = m.roof_percent
            rows.append([m.form.describe(), f"{m.median_ms:.2f}", f"{m.throughput:.1f}",
                         "-" if roof is None else f"{roof:.1f}",
                         "-" if m.peak_mib is None else f"{m.peak_mib:.0f}",
                         "-" if m.top1 is None else f"{m.top1:.2f}",
                         "-" if m.out_rel_err is None else f"{m.out_rel_err:.1e}",
                         "(current)" if m is base else f"{gain:.2f}x",
                         "" if m is base else ("-" if drop is None else f"{drop:+.2f} pt") +
                         (f", build {m.build_s:.0f} s" if m.build_s >= 1 else "") + (f"; {m.note}" if m.note else "")])
        return text_table(("form", "median ms", "items/s", "% of roof", "peak MiB", "top-1", "out diff", "gain",
                           "cost"), rows, "lrrrrrrrl", rule="")


@dataclass
class OptimizeResult:
    steps: list[StepResult]
    best: Measurement
    baseline: Measurement
    isa: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)


def _roofs(model: nn.Module, size: Sequence[int], peaks: Callable[[int], HardwarePeaks] | None
           ) -> Callable[[Form], float | None]:
    """form -> its roof in ms under `peaks(form.threads)` (None without peaks, or when the form's dtype has no
    measured peak there); the model is counted once as trained and once prepared (folded), as the form needs."""
    counted: dict[bool, Any] = {}

    def roof(form: Form) -> float | None:
        if peaks is None:
            return None
        from ..analysis.counting import count
        from ..analysis.waterline import form_roof
        if form.prepare not in counted:
            m = copy.deepcopy(model).eval()
            counted[form.prepare] = count(prepare_for_inference_(m) if form.prepare else m, size)
        ceilings = peaks(form.threads)
        if form.dtype not in ceilings.compute_gflops:
            return None
        return 1e3 * form_roof(counted[form.prepare], form, ceilings)
    return roof


def _candidates(step: str, f: Form, max_threads: int, log: Callable[[str], None]) -> list[Form]:
    """The forms step `step` tries on top of the current form `f` (none when the step does not apply)."""
    if step == "prepare" and not f.prepare:
        return [replace(f, prepare=True)]
    if step == "channels_last" and not f.channels_last:
        return [replace(f, channels_last=True)]
    if step == "bf16" and f.dtype == "fp32":
        return [replace(f, dtype="bf16")]
    if step == "compile" and not f.compile:
        return [replace(f, compile=True)]
    if step == "int8" and f.dtype != "int8":
        from .quantize import available
        if not available():
            log("int8: skipped (torchao missing: pip install \"convscope[deploy]\")")
            return []
        # BatchNorms are folded before quantising, so none stays in float
        return [replace(f, dtype="int8", compile=True, prepare=True)]
    if step == "int8_mixed" and f.dtype == "int8" and not f.mixed_bf16:
        return [replace(f, mixed_bf16=True)]
    if step == "threads":
        return [replace(f, threads=t) for t in range(1, max_threads + 1) if t != f.threads]
    if step == "bf16_freeze" and f.dtype != "int8" and not (f.dtype == "bf16" and f.compile and f.freeze):
        return [replace(f, dtype="bf16", compile=True, freeze=True)]
    return []


def optimize(model: nn.Module, size: Sequence[int], *, steps: Sequence[str] = STEPS, loader: Iterable | None = None,
             calibration: Iterable | None = None, max_drop: float = 1.0, min_gain: float = 1.03,
             max_threads: int | None = None, repeats: int = 10, qat_steps: int = 100,
             peaks: Callable[[int], HardwarePeaks] | None = None, log: Callable[[str], None] = print) -> OptimizeResult:
    """Greedy search over `steps` (see the module docstring); returns every measurement and the best form. When
    int8 PTQ loses more than `max_drop` and the calibration batches are labelled, int8 with `qat_steps` steps of
    quantisation-aware fine-tuning is tried next. peaks: thread count -> this machine's ceilings at it (e.g.
    `lambda t: hardware_peaks("cpu", threads=t)`); with them every measurement gets its form's roof."""
    unknown = set(steps) - set(ALL_STEPS)
    if unknown:
        raise ValueError(f"unknown optimize steps {sorted(unknown)}; expected some of {ALL_STEPS}")
    isa = cpu_isa()
    g = torch.Generator().manual_seed(1)
    rx = torch.randn(*size, generator=g)
    with torch.no_grad():
        reference = (rx, copy.deepcopy(model).eval()(rx).float())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    max_threads = max_threads or cores

    roof = _roofs(model, size, peaks)

    def run(form: Form) -> tuple[Measurement, dict]:
        try:
            m, i = measure_form(model, form, size, loader=loader, reference=reference, calibration=calibration,
                                repeats=repeats)
        except Exception as e:  # noqa: BLE001 - a form that fails to build is reported, not fatal
            first = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
            return Measurement(form, float("inf"), 0.0, None, note=f"failed: {type(e).__name__}: {first}"), {}
        m.roof_ms = roof(form)
        return m, i

    best, info = run(Form(threads=1))
    baseline = best
    log(f"machine: {isa['summary']}; baseline {best.form.describe()}: {best.median_ms:.2f} ms, "
        f"{best.throughput:.1f} items/s" + (f", top-1 {best.top1:.2f}" if best.top1 is not None else ""))
    results = []
    for step in steps:
        cands = _candidates(step, best.form, max_threads, log)
        if not cands:
            continue
        before = best
        tried = []
        why = "no candidate was faster"
        for c in cands:
            m, i = run(c)
            over = m.top1 is not None and baseline.top1 is not None and baseline.top1 - m.top1 > max_drop
            if over and c.dtype == "int8" and not c.qat_steps and qat_steps and calibration is not None:
                cands.append(replace(c, qat_steps=qat_steps))  # PTQ lost too much: fine-tune with fake quant
            tried.append(m)
            drop = None if m.top1 is None or baseline.top1 is None else baseline.top1 - m.top1
            if drop is not None and drop > max_drop:
                m.note = (m.note + "; " if m.note else "") + f"over the budget ({drop:.2f} > {max_drop} pt)"
                continue
            exact_fold = step == "prepare" and m.median_ms < best.median_ms * min_gain
            if m.median_ms * min_gain < best.median_ms or exact_fold:
                best, info = m, i
                why = f"kept {m.form.describe()}"
        if step == "prepare" and best is not before and best.median_ms >= before.median_ms:
            why += " (exact, and no slower than the noise: kept)"
        if best is before:
            why = "kept the current form: " + (tried[0].note if len(tried) == 1 and tried[0].note else why)
        sr = StepResult(step, before, tried, best, why)
        results.append(sr)
        log(f"\n== {step}: {why}\n{sr.table()}")
    return OptimizeResult(results, best, baseline, isa, info)


def write_result(result: OptimizeResult, out: str | os.PathLike, source: str, size: Sequence[int],
                 data: str | None) -> tuple[Path, Recipe]:
    """Write the best form into `out`: recipe.json, and the model (model.pt2 for int8: the exported int8 program;
    model.safetensors for float forms: the weights with the source's description and form, so that `convscope
predict` / `eval` take it)."""
    from ..files import atomic_write_text
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    best = result.best
    recipe = Recipe(source=str(source), input_size=tuple(int(s) for s in size), form=asdict(best.form), data=data,
                    measured=dict(median_ms=best.median_ms, throughput=best.throughput, top1=best.top1,
                                  baseline_median_ms=result.baseline.median_ms, baseline_top1=result.baseline.top1,
                                  speedup=result.baseline.median_ms / best.median_ms, roof_ms=best.roof_ms),
                    machine=dict(isa=result.isa["summary"], capability=result.isa["capability"],
                                 torch=torch.__version__))
    if "quantized" in result.info:
        from .quantize import save_int8
        save_int8(result.info["quantized"], out / "model.pt2")
        recipe.measured["quant"] = result.info["quant_report"].to_dict()
    elif "module" in result.info:
        save_model_file(out / "model.safetensors", result.info["module"].state_dict(),
                        source_meta(source, "prepare" if best.form.prepare else "train"))
    atomic_write_text(out / "recipe.json", recipe.to_json())
    return out / "recipe.json", recipe


def apply_recipe(recipe: Recipe, *, data: str | None = None, limit: int | None = 512
                 ) -> tuple[Callable, dict, nn.Module, dict]:
    """Rebuild the recipe's form: (runner, build info, the source model, source info)."""
    model, src = load_source(recipe.source)
    form = Form(**recipe.form)
    size = recipe.input_size
    calibration = None
    data = data or recipe.data
    if form.dtype == "int8" and data:
        calibration = list(itertools.islice(eval_loader(src, data, size[0], limit, split="train"),
                                            recipe.calibration_batches))
    torch.set_num_threads(form.threads)
    run, info = build_form(model, form, torch.randn(*size), calibration, recipe.calibration_batches)
    return run, info, model, src
