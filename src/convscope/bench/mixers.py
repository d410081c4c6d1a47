"""The mixer bench: train every `mixer_bench_<mixer>` variant (one MetaFormer skeleton, only the token mixer
changes; see `convscope.models.mixer_bench`) with the same recipe and seed through the training engine, count its
parameters and MACs, time it on this machine (eager and, where the mixer has one, its deploy form: re-parameterised
branches, precomputed generated kernels), and write a table (markdown + JSON) and Pareto plots (accuracy vs
latency and vs MACs).

    convscope bench-mixers --data fashion-mnist --epochs 1 --limit-train 3000 --out runs/mixer_bench
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..files import read_json

INPUT_SIZE = 32  # every variant trains and is timed at 32x32 (Fashion-MNIST's 28x28 resized)


@dataclass
class MixerRow:
    mixer: str
    model: str
    params_m: float
    macs_m: float
    top1: float
    loss: float
    train_s: float
    latency_ms: float
    deploy_latency_ms: float | None = None
    deploy_max_abs_err: float | None = None

    @property
    def best_latency_ms(self) -> float:
        return min(self.latency_ms, self.deploy_latency_ms or self.latency_ms)


@dataclass
class MixerBenchResult:
    rows: list[MixerRow]
    settings: dict[str, Any]
    machine: dict[str, Any]
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(settings=self.settings, machine=self.machine, rows=[asdict(r) for r in self.rows])

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MixerBenchResult:
        """The result `to_dict` wrote (mixer_bench.json)."""
        return cls([MixerRow(**r) for r in d["rows"]], d["settings"], d["machine"])


def bench_variants(mixers: Sequence[str] | None = None) -> list[str]:
    """The registered mixer_bench variants (optionally only those of the named mixers)."""
    from ..models import list_models

    names = list_models("mixer_bench_*")
    if mixers:
        wanted = {f"mixer_bench_{m}" for m in mixers}
        unknown = sorted(wanted - set(names))
        if unknown:
            raise ValueError(f"no mixer bench variant {unknown}; there are {names}")
        names = [n for n in names if n in wanted]
    return names


DEPLOY_TRANSFORMS = ("reparameterize", "materialize")


def _deploy_steps(model: torch.nn.Module) -> list[str]:
    """The deploy transforms that act on `model`: structural re-parameterisation, generated-kernel precompute."""
    from ..deploy import get_transform

    return [t for t in DEPLOY_TRANSFORMS if get_transform(t).applies_to(model)]


def _latencies_ms(models: dict[str, torch.nn.Module], in_chans: int, batch: int, repeats: int,
                 threads: int | None) -> dict[str, float]:
    """Median batch-`batch` inference latency of every model, measured interleaved (each round runs every model
    once, in a rotating order) so that a change of load on a shared machine hits all of them alike."""
    from ..analysis import measure_interleaved
    from ..utils import threads_set

    x = torch.randn(batch, in_chans, INPUT_SIZE, INPUT_SIZE)

    def call(m):
        return lambda: m(x)

    with threads_set(threads), torch.inference_mode():
        stats = measure_interleaved({k: call(m.eval()) for k, m in models.items()}, warmup=3, rounds=repeats,
                                    max_time_s=30.0 * len(models))
    return {k: s.median_s * 1e3 for k, s in stats.items()}


RECIPE = "AdamW wd 0.05, warmup 0, cosine, label smoothing 0.1, hflip 0.5, random-resized-crop scale (0.5, 1)"
# The settings a finished row was trained with; a rerun into the same --out reuses a row only when they match.
ROW_SETTINGS = ("data", "epochs", "limit_train", "limit_eval", "batch_size", "lr", "seed", "input_size", "in_chans",
                "recipe")


def _row_files(rows_dir: Path, name: str) -> tuple[Path, Path]:
    """(row JSON, trained weights) of variant `name` under `rows_dir`."""
    return rows_dir / f"{name}.json", rows_dir / f"{name}.safetensors"


def _finished_rows(rows_dir: Path | None, names: Sequence[str], settings: dict[str, Any]) -> dict[str, dict]:
    """The rows an earlier run into the same directory finished ({name: what `_save_row` wrote}); ValueError
    when one was trained with other settings."""
    done = {}
    for name in names if rows_dir is not None else ():
        row_file, weights = _row_files(rows_dir, name)
        if not (row_file.is_file() and weights.is_file()):
            continue
        saved = read_json(row_file)
        if not (isinstance(saved, dict) and isinstance(saved.get("row"), dict) and saved["row"].get("model") == name
                and isinstance(saved.get("num_classes"), int) and isinstance(saved.get("settings"), dict)):
            raise ValueError(f"{row_file} is not a finished mixer bench row; remove it to train {name} again")
        theirs = saved["settings"]
        diff = [f"{k} {theirs.get(k)!r} -> {settings[k]!r}" for k in ROW_SETTINGS if theirs.get(k) != settings[k]]
        if diff:
            raise ValueError(f"{row_file} was trained with other settings ({'; '.join(diff)}); give another --out "
                             "or remove its rows directory")
        done[name] = saved
    return done


def _save_row(rows_dir: Path, row: MixerRow, model: torch.nn.Module, settings: dict[str, Any]) -> None:
    """The trained weights, then the row (so that a row file means a finished row), each written atomically."""
    from ..files import atomic_write_json
    from ..models import save_weights

    row_file, weights = _row_files(rows_dir, row.model)
    save_weights(model, weights)
    fields = {k: v for k, v in asdict(row).items() if k not in ("latency_ms", "deploy_latency_ms")}
    atomic_write_json(row_file, dict(row=fields, num_classes=model.num_classes,
                                     settings={k: settings[k] for k in ROW_SETTINGS}))


def _load_row(rows_dir: Path, saved: dict, in_chans: int) -> tuple[MixerRow, torch.nn.Module]:
    """A finished row and its trained model, as `_save_row` wrote them."""
    from safetensors.torch import load_file

    from ..models import create_model

    row = MixerRow(**saved["row"], latency_ms=float("nan"))
    kwargs = dict(input_size=INPUT_SIZE) if row.mixer == "tvconv" else {}
    model = create_model(row.model, num_classes=saved["num_classes"], in_chans=in_chans, **kwargs)
    model.load_state_dict(load_file(_row_files(rows_dir, row.model)[1]))
    return row, model.eval()


def _train_row(name: str, settings: dict[str, Any], threads: int | None, tmp: str,
               log: Callable[[str], None]) -> tuple[MixerRow, torch.nn.Module]:
    """Train variant `name` with the bench's recipe; its row (latency not yet measured) and the trained model."""
    from ..analysis import count
    from ..train import TrainConfig, train

    s = settings
    mixer = name.removeprefix("mixer_bench_")
    kwargs = dict(input_size=INPUT_SIZE) if mixer == "tvconv" else {}
    cfg = TrainConfig(model=name, data=s["data"], out=str(Path(tmp) / name), epochs=s["epochs"],
                      batch_size=s["batch_size"], lr=s["lr"], warmup_epochs=0.0, model_kwargs=kwargs,
                      input_size=INPUT_SIZE, in_chans=s["in_chans"], data_limit=s["limit_train"],
                      eval_limit=s["limit_eval"], scale=(0.5, 1.0), seed=s["seed"], threads=threads, quiet=True,
                      progress="none", device="cpu")
    t0 = time.perf_counter()
    res = train(cfg)
    train_s = time.perf_counter() - t0
    model = res.model.eval()
    counted = count(model, (1, s["in_chans"], INPUT_SIZE, INPUT_SIZE))
    params = sum(p.numel() for p in model.parameters())
    dep_err = None
    steps = _deploy_steps(model)
    if steps:
        x = torch.randn(4, s["in_chans"], INPUT_SIZE, INPUT_SIZE)
        with torch.no_grad():
            dep_err = float((_deployed(model)(x) - model(x)).abs().max())
    log(f"{name}: top-1 {res.final['top1']:.2f}%  {params / 1e6:.3f} M params  "
        f"{counted.totals.macs / 1e6:.2f} M MACs  [{train_s:.0f} s]")
    return MixerRow(mixer, name, params / 1e6, counted.totals.macs / 1e6, float(res.final["top1"]),
                    float(res.final["loss"]), train_s, float("nan"), None, dep_err), model


def _deployed(model: torch.nn.Module) -> torch.nn.Module:
    """The model's deploy form (the transforms that act on it applied to a copy)."""
    from ..deploy import transform

    return transform(model, *_deploy_steps(model))


def run_mixer_bench(data: str = "fashion-mnist", epochs: int = 1, limit_train: int | None = None, *,
                    limit_eval: int | None = None, mixers: Sequence[str] | None = None, batch_size: int = 64,
                    lr: float = 2e-3, seed: int = 0, threads: int | None = None, latency_batch: int = 1,
                    repeats: int = 20, out: str | os.PathLike | None = None,
                    log: Callable[[str], None] = print) -> MixerBenchResult:
    """Train, count and time every mixer bench variant with one recipe (AdamW, cosine, `epochs`, batch
    `batch_size`, lr `lr`, light augmentation, seed `seed`) on `data` ('fashion-mnist', an idx directory, an image
    folder or 'synthetic'), at 32x32. With `out`, each finished row and its weights are written to `out/rows` as
    they finish, and a rerun into the same `out` with the same settings reuses them instead of training again
    (the latencies are always measured anew, every form interleaved)."""
    from ..analysis.hardware import machine_info
    from ..data import probe_data

    names = bench_variants(mixers)
    in_chans = 1 if probe_data(data).gray else 3   # the data's own channels
    settings = dict(data=data, epochs=epochs, limit_train=limit_train, limit_eval=limit_eval, batch_size=batch_size,
                    lr=lr, seed=seed, input_size=INPUT_SIZE, in_chans=in_chans, threads=threads or
                    torch.get_num_threads(), latency_batch=latency_batch, repeats=repeats, recipe=RECIPE,
                    load_average=" ".join(f"{x:.2f}" for x in os.getloadavg()))
    rows_dir = None if out is None else Path(out) / "rows"
    done = _finished_rows(rows_dir, names, settings)
    rows, timed = [], {}
    with tempfile.TemporaryDirectory(prefix="mixer_bench_") as tmp:
        for name in names:
            if name in done:
                row, model = _load_row(rows_dir, done[name], in_chans)
                log(f"{name}: top-1 {row.top1:.2f}% (finished in {rows_dir}: not trained again)")
            else:
                row, model = _train_row(name, settings, threads, tmp, log)
                if rows_dir is not None:
                    _save_row(rows_dir, row, model, settings)
            if _deploy_steps(model):
                timed[f"{name}:deploy"] = _deployed(model)
            timed[name] = model
            rows.append(row)
    log(f"timing {len(timed)} forms interleaved, {repeats} rounds ...")
    settings["load_average_timing"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    lat = _latencies_ms(timed, in_chans, latency_batch, repeats, threads)
    for row in rows:
        row.latency_ms = lat[row.model]
        row.deploy_latency_ms = lat.get(f"{row.model}:deploy")
        log(f"{row.model}: {row.latency_ms:.2f} ms" + (f" (deploy {row.deploy_latency_ms:.2f} ms)"
                                                       if row.deploy_latency_ms is not None else ""))
    return MixerBenchResult(rows, settings, machine_info("cpu"))


def markdown_table(result: MixerBenchResult) -> str:
    lines = ["| mixer | params (M) | MACs (M) | top-1 (%) | eval loss | latency (ms) | deploy latency (ms) | "
             "deploy max err | train (s) |",
             "|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in sorted(result.rows, key=lambda r: -r.top1):
        dep = "-" if r.deploy_latency_ms is None else f"{r.deploy_latency_ms:.2f}"
        err = "-" if r.deploy_max_abs_err is None else f"{r.deploy_max_abs_err:.1e}"
        lines.append(f"| {r.mixer} | {r.params_m:.3f} | {r.macs_m:.2f} | {r.top1:.2f} | {r.loss:.3f} | "
                     f"{r.latency_ms:.2f} | {dep} | {err} | {r.train_s:.0f} |")
    return "\n".join(lines) + "\n"


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats (lower x and higher y), by increasing x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def plot_pareto(result: MixerBenchResult, path: str | os.PathLike) -> str | None:
    """Accuracy vs latency (best form) and vs MACs, with the Pareto fronts; None (and a message) without
    matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: `pip install convscope[lab]` for the Pareto plot"
    rows = result.rows
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, key, label in ((axes[0], "best_latency_ms", "latency, batch "
                            f"{result.settings['latency_batch']} (ms, best form)"), (axes[1], "macs_m", "MACs (M)")):
        pts = [(getattr(r, key), r.top1) for r in rows]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts])
        for r, (x, y) in zip(rows, pts, strict=False):
            ax.annotate(r.mixer, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=8)
        front = pareto_front(pts)
        ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "--", alpha=0.6)
        ax.set_xlabel(label)
        ax.set_ylabel("top-1 (%)")
        ax.grid(alpha=0.3)
    fig.suptitle(f"mixer bench: {result.settings['data']}, {result.settings['epochs']} epoch(s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
    return None


def write_outputs(result: MixerBenchResult, out: str | os.PathLike, command: str = "") -> list[str]:
    """mixer_bench.md, mixer_bench.json and mixer_bench.png (when matplotlib is there) under `out`, each written
    atomically."""
    import importlib.util

    from ..analysis.hardware import describe_machine
    from ..files import atomic_path, atomic_write_text

    out = Path(out)
    files = [str(out / "mixer_bench.md"), str(out / "mixer_bench.json")]
    atomic_write_text(out / "mixer_bench.json", json.dumps(result.to_dict(), indent=1) + "\n")
    note = "matplotlib is not installed: `pip install convscope[lab]` for the Pareto plot"
    if importlib.util.find_spec("matplotlib") is not None:
        with atomic_path(out / "mixer_bench.png") as tmp:
            note = plot_pareto(result, tmp)
        files.append(str(out / "mixer_bench.png"))
    s = result.settings
    text = ["# Mixer bench\n",
            f"`{command}`\n" if command else "",
            f"Machine: {describe_machine(result.machine)}; load average (1, 5, 15 min) at the start "
            f"{s['load_average']}.\n",
            f"Data: {s['data']}, {s['epochs']} epoch(s)" + (f", first {s['limit_train']} training images" if
                                                           s['limit_train'] else "")
            + f"; input {s['in_chans']}x{s['input_size']}x{s['input_size']}; batch {s['batch_size']}, lr {s['lr']}, "
              f"seed {s['seed']}; {s['recipe']}. Latency: median of {s['repeats']} interleaved rounds at batch "
              f"{s['latency_batch']}, {s['threads']} thread(s), every form timed once per round in a rotating "
              f"order (load average {s.get('load_average_timing', '?')} when timing began); deploy = "
              f"`convscope.deploy.transform(model, \"reparameterize\", \"materialize\")` (those that apply) where a "
              f"mixer has a deploy form.\n",
            markdown_table(result),
            "![Pareto](mixer_bench.png)\n" if note is None else f"({note})\n"]
    atomic_write_text(out / "mixer_bench.md", "\n".join(t for t in text if t))
    result.files = files
    return files
