"""`convscope hw`, `profile` and `compare`: the efficiency lab (convscope.analysis)."""
from __future__ import annotations

import argparse
import shlex
from collections.abc import Callable

from ..models import create_model, model_card
from . import options, values


def _input_size(args: argparse.Namespace, name: str) -> tuple[int, int, int, int]:
    """(batch, C, H, W) from --batch and --size (default: the model card's size)."""
    return values.input_shape(args.batch, model_card(name).input_size, args.size)


def _check_outputs(args: argparse.Namespace) -> None:
    """Before any measuring: --html has matplotlib, and the two reports are not one file."""
    from ..extras import require

    if args.html:
        require("matplotlib", "--html (the report's charts)")
    if args.html and args.json and args.html.resolve() == args.json.resolve():
        raise ValueError(f"--html and --json are the same file ({args.html}); give two names")


def _command(args: argparse.Namespace) -> str:
    return shlex.join(["convscope", *args.argv])


def _print_ceiling_warnings(peaks: dict, machine: dict) -> None:
    """A 'warning:' line beside the results for each reason the ceilings they were measured against are wrong."""
    from ..analysis.ceilings import ceiling_warnings

    for line in ceiling_warnings(peaks, machine.get("logical_cpus")):
        print(f"warning: {line}")


def _cmd_hw(args: argparse.Namespace) -> int:
    from ..analysis.hardware import hardware_peaks

    dtypes = tuple(d.strip() for d in args.dtypes.split(",") if d.strip())
    peaks = hardware_peaks(args.device, threads=args.threads, refresh=args.refresh, dtypes=dtypes)
    print(peaks.to_json() if args.json else peaks.summary())
    return 0


def _cmd_profile(args: argparse.Namespace) -> int:
    from ..analysis.counting import count
    from ..analysis.timing import benchmark

    name = model_card(args.name).name
    size = _input_size(args, name)
    _check_outputs(args)
    model = create_model(name)
    counts = count(model, size)
    print(counts.summary())
    bench = benchmark(model, size, mode="train" if args.train else "inference", dtype=args.dtype,
                      channels_last=args.channels_last, compile=args.compile, threads=args.threads,
                      device=args.device, repeats=args.repeats)
    print(f"\n{bench.describe()}\n{bench.table()}")
    if not (args.layers or args.html or args.json):
        return 0
    from ..analysis.waterline import profile_layers

    prof = profile_layers(model, size, dtype=args.dtype, channels_last=args.channels_last, threads=args.threads,
                          device=args.device, repeats=args.repeats, clock=args.clock)
    print(f"\nper-layer waterline (eager inference forward{', without torch.compile' if args.compile else ''}):")
    print(prof.summary())
    _print_ceiling_warnings(prof.peaks, prof.machine)
    print(f"\n{prof.group_table('kind')}\n\n{prof.table(args.top)}")
    if args.json:
        prof.to_json(args.json)
        print(f"\nwrote {args.json}")
    if args.html:
        from ..analysis.report import profile_report, write_report

        write_report(profile_report(prof, benchmark=bench, command=_command(args), top=args.top), args.html)
        print(f"wrote {args.html}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from ..analysis.waterline import compare_models

    names = [model_card(n).name for n in args.names]
    sizes = {_input_size(args, n) for n in names}
    _check_outputs(args)
    if len(sizes) > 1:
        raise ValueError(f"the models have different default input sizes {sorted(sizes)}; pass --size")
    cmp = compare_models(names, sizes.pop(), dtype=args.dtype, channels_last=args.channels_last,
                         threads=args.threads, device=args.device, repeats=args.repeats)
    print(f"{cmp.describe()}\n{cmp.table()}")
    _print_ceiling_warnings(cmp.peaks, cmp.machine)
    if args.json:
        cmp.to_json(args.json)
        print(f"\nwrote {args.json}")
    if args.html:
        from ..analysis.report import compare_report, write_report

        write_report(compare_report(cmp, command=_command(args)), args.html)
        print(f"wrote {args.html}")
    return 0


def _lab_options(sp: argparse.ArgumentParser) -> None:
    """The options profile and compare share."""
    options.add_batch(sp)
    options.add_size(sp, "the model card's")
    sp.add_argument("--dtype", choices=values.LAB_DTYPES, default="fp32",
                    help="latency: autocast to this dtype; layers: the model cast to it")
    sp.add_argument("--channels-last", action="store_true")
    options.add_threads(sp)
    sp.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    options.add_repeats(sp, 10)
    sp.add_argument("--html", type=values.output_file(), default=None, metavar="FILE",
                    help="write a self-contained HTML report (profile: implies --layers)")
    sp.add_argument("--json", type=values.output_file(), default=None, metavar="FILE",
                    help="write the results as JSON (profile: the layer profile, implies --layers)")


def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """hw, profile, compare."""
    sp = add("hw", _cmd_hw, "measure (or show the cached) compute peaks and memory bandwidth of this machine")
    sp.add_argument("--refresh", action="store_true", help="measure again instead of reading the cache")
    sp.add_argument("--device", default="auto", help="cpu, cuda or auto (CUDA when present)")
    options.add_threads(sp, help=None)
    sp.add_argument("--dtypes", default="fp32,bf16,fp16,int8", help="compute peaks to measure (comma-separated; "
                    "int8: the oneDNN int8 product the int8 deploy form runs)")
    sp.add_argument("--json", action="store_true")

    sp = add("profile", _cmd_profile, "count and time a model; with --layers, per-layer waterline analysis")
    sp.add_argument("name")
    _lab_options(sp)
    sp.add_argument("--compile", action="store_true", help="torch.compile for the latency (compile time "
                    "reported apart); layers are always profiled eagerly")
    sp.add_argument("--train", action="store_true", help="time training steps (forward, backward, SGD step)")
    sp.add_argument("--layers", action="store_true", help="per-layer times, bounds and efficiencies")
    sp.add_argument("--top", type=values.positive_int, default=25, help="slowest layers to list")
    sp.add_argument("--clock", choices=("wall", "thread"), default="wall",
                    help="time layers by the wall clock (torch.profiler) or by the thread's CPU time (one CPU "
                         "thread only; steadier on a busy machine)")

    sp = add("compare", _cmd_compare, "count and time several models; efficiency-gap and Pareto charts")
    sp.add_argument("names", nargs="+", metavar="NAME")
    _lab_options(sp)
