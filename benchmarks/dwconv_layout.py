"""Depthwise conv time against kernel size, NCHW vs channels-last, and the oneDNN kernel PyTorch picks.

    PYTHONPATH=src python benchmarks/dwconv_layout.py [--channels 128] [--size 56] [--threads 1]
        [--out benchmarks/results/dwconv_layout.md]

The shape is RepLKNet-31B's first stage at 224x224 (128 channels, 56x56, batch 1). Both layouts run interleaved,
fp32, inference mode; median of `--repeats` runs. The implementation column is what oneDNN reports
(ONEDNN_VERBOSE=1) for one call in a fresh process.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks")]

KERNELS = (3, 5, 7, 9, 11, 13, 15, 17, 21, 27, 31)
_PROBE = """
import torch, torch.nn.functional as F
c, s, k, cl = {c}, {s}, {k}, {cl}
fmt = torch.channels_last if cl else torch.contiguous_format
x = torch.randn(1, c, s, s).contiguous(memory_format=fmt)
w = torch.randn(c, 1, k, k).contiguous(memory_format=fmt)
with torch.inference_mode():
    F.conv2d(x, w, padding=k // 2, groups=c)
"""


def onednn_impl(channels: int, size: int, k: int, channels_last: bool) -> str:
    env = dict(os.environ, ONEDNN_VERBOSE="1")
    code = _PROBE.format(c=channels, s=size, k=k, cl=channels_last)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env).stdout
    found = re.findall(r"primitive,exec,cpu,convolution,([^,]+),", out)
    return found[-1] if found else "(not oneDNN)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--channels", type=int, default=128)
    p.add_argument("--size", type=int, default=56)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=21)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    import torch
    import torch.nn.functional as F
    from reparam_speed import cpu_model

    torch.set_num_threads(args.threads)
    c, s = args.channels, args.size
    rows = []
    for k in KERNELS:
        x = torch.randn(1, c, s, s)
        w = torch.randn(c, 1, k, k)
        forms = {"nchw": (x, w), "channels_last": (x.contiguous(memory_format=torch.channels_last),
                                                   w.contiguous(memory_format=torch.channels_last))}
        times = {f: [] for f in forms}
        with torch.inference_mode():
            for _ in range(3):  # warm-up
                for xi, wi in forms.values():
                    F.conv2d(xi, wi, padding=k // 2, groups=c)
            for r in range(args.repeats):
                for f in (forms if r % 2 == 0 else reversed(list(forms))):
                    xi, wi = forms[f]
                    t0 = time.perf_counter()
                    F.conv2d(xi, wi, padding=k // 2, groups=c)
                    times[f].append(time.perf_counter() - t0)
        macs = c * s * s * k * k
        med = {f: statistics.median(t) for f, t in times.items()}
        impl = {f: onednn_impl(c, s, k, f == "channels_last") for f in forms}
        rows.append((k, macs, med["nchw"], med["channels_last"], impl["nchw"], impl["channels_last"]))
        print(f"k={k:2d}  nchw {med['nchw'] * 1e3:8.2f} ms ({impl['nchw']})  channels_last "
              f"{med['channels_last'] * 1e3:8.2f} ms ({impl['channels_last']})", flush=True)

    if args.out:
        lines = [
            "# Depthwise conv on this CPU: kernel size and memory layout",
            "",
            f"Command: `PYTHONPATH=src python benchmarks/dwconv_layout.py --out {args.out}`",
            f"Machine: {cpu_model()}, {args.threads} thread(s), torch {torch.__version__}, Python "
            f"{platform.python_version()}, fp32, inference mode.",
            f"Shape: batch 1, {c} channels, {s}x{s}, 'same' padding (RepLKNet-31B stage 1 at 224). Median of "
            f"{args.repeats} interleaved runs; GMAC/s counts one multiply-add per kernel tap.",
            "",
            "| kernel | NCHW (ms) | channels-last (ms) | NCHW / channels-last | NCHW GMAC/s | channels-last GMAC/s "
            "| oneDNN kernel NCHW | oneDNN kernel channels-last |",
            "|---|---|---|---|---|---|---|---|",
        ] + [f"| {k}x{k} | {a * 1e3:.2f} | {b * 1e3:.2f} | {a / b:.1f} | {m / a / 1e9:.2f} | {m / b / 1e9:.2f} | "
             f"{ia} | {ib} |" for k, m, a, b, ia, ib in rows]
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
