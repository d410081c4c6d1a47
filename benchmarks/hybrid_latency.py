"""Eager inference latency of convscope's hybrids against the libraries users take them from today.

For the tiny / small variant of each conv/attention hybrid that timm (or Hugging Face transformers, for CvT)
carries, both implementations get the same random weights (loaded through `load_checkpoint`), and their forward
passes are timed alternately in one process at batch 1 and 8: the ratio convscope / reference is what the page
reports (medians of `--repeats` runs; below 1 means convscope is faster).

    PYTHONPATH=src python benchmarks/hybrid_latency.py --threads 1 --repeats 9 \
        --out benchmarks/results/hybrid_latency.md
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: ours -> (library, its name), at the card's input size
PAIRS = {
    "maxvit_tiny_tf_224": ("timm", "maxvit_tiny_tf_224"),
    "volo_d1_224": ("timm", "volo_d1_224"),
    "convit_tiny": ("timm", "convit_tiny"),
    "crossvit_tiny_240": ("timm", "crossvit_tiny_240"),
    "halonet26t": ("timm", "halonet26t"),
    "cvt_13_224": ("transformers", "cvt-13"),
}


def _reference(lib: str, name: str):
    from tests.conftest import import_timm, randomize_
    timm = import_timm()  # transformers imports torchvision too: the same CPU shim
    if lib == "timm":
        ref = timm.create_model(name, pretrained=False)
        randomize_(ref)
        for m in ref.modules():  # derived index tables are not weights
            if hasattr(m, "init_non_persistent_buffers"):
                m.init_non_persistent_buffers()
        return ref.eval(), "timm"
    from transformers import CvtConfig, CvtForImageClassification

    ref = CvtForImageClassification(CvtConfig(depth=[1, 2, 10], embed_dim=[64, 192, 384], num_heads=[1, 3, 6],
                                              num_labels=1000))
    return randomize_(ref).eval(), "transformers"


def _time(fn, x, repeats: int) -> list[float]:
    import torch

    with torch.inference_mode():
        fn(x)
        out = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn(x)
            out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(PAIRS), help="comma-separated convscope names (default: all)")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    sys.path[:0] = [str(ROOT / "src"), str(ROOT)]
    import torch
    from common import cpu_name, load_average

    import convscope
    from convscope import load_checkpoint

    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models.split(","):
        lib, ref_name = PAIRS[name]
        card = convscope.model_card(name)
        ref, source = _reference(lib, ref_name)
        # transformers' CvT uses exact GELU where the official code has QuickGELU: build ours in that form
        ours = convscope.create_model(name, **(dict(mlp_act="gelu") if source == "transformers" else {})).eval()
        load_checkpoint(ours, ref.state_dict(), source=source)
        run_ref = (lambda x, ref=ref: ref(x).logits) if source == "transformers" else ref
        for b in (int(v) for v in args.batches.split(",")):
            x = torch.randn(b, *card.input_size, generator=torch.Generator().manual_seed(0))
            with torch.inference_mode():
                err = ((ours(x) - run_ref(x)).abs().max() / run_ref(x).abs().max()).item()
            t_ours, t_ref = [], []
            for _ in range(args.repeats):  # alternate, so that load changes hit both alike
                t_ours += _time(ours, x, 1)
                t_ref += _time(run_ref, x, 1)
            mo, mr = statistics.median(t_ours), statistics.median(t_ref)
            rows.append((name, f"{source} {ref_name}", b, f"{card.input_size[1]}x{card.input_size[2]}",
                         mo * 1e3, mr * 1e3, mo / mr, err))
            print(f"{name:22s} b{b}: convscope {mo * 1e3:8.1f} ms, {source} {mr * 1e3:8.1f} ms, "
                  f"ratio {mo / mr:.3f} (rel err {err:.1e})", flush=True)
    lines = ["# Hybrids: convscope vs timm / transformers eager latency", "",
             f"Command: `PYTHONPATH=src python benchmarks/hybrid_latency.py --threads {args.threads} --repeats "
             f"{args.repeats} --out benchmarks/results/hybrid_latency.md`", "",
             f"Machine: {cpu_name()}, {args.threads} thread(s), torch {torch.__version__}, fp32, eager, "
             f"inference mode; load average after the run: {load_average()} (a shared machine: compare the ratios, "
             "measured alternately in one run, not the absolute times).", "",
             "| ours | reference | batch | input | convscope ms | reference ms | ratio | logits rel err |",
             "|---|---|---:|---|---:|---:|---:|---:|"]
    lines += [f"| `{n}` | {r} | {b} | {s} | {mo:.1f} | {mr:.1f} | {q:.3f} | {e:.1e} |"
              for n, r, b, s, mo, mr, q, e in rows]
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
