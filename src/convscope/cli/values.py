"""One argparse parser per kind of value, with the same limits for every command that takes it.

A parser raises `argparse.ArgumentTypeError` with what was expected and what was given; argparse prints it as one
line naming the flag (`argument --size: ...`) and the command exits with status 2, before any work. Output paths
are checked here too (a directory where a file goes, a dangling link, a parent that is a file); that an output is
not one of the command's inputs is `check_distinct`'s job, called by a command before its work.
"""
from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from ..files import check_output_dir, check_output_file
from ..limits import MAX_INPUT_ELEMENTS, MAX_SIDE, MAX_THREADS

LAB_DTYPES = ("fp32", "bf16", "fp16")


def _int(s: str) -> int:
    try:
        return int(s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer; got {s!r}") from None


def int_range(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """An integer in [lo, hi] (no upper bound when hi is None)."""
    def parse(s: str) -> int:
        v = _int(s)
        if v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}" + (f" and <= {hi}" if hi else "") +
                                             f"; got {s!r}")
        return v
    parse.__name__ = f"int in [{lo}, {hi}]"
    return parse


positive_int = int_range(1)
non_negative_int = int_range(0)
threads = int_range(1, MAX_THREADS)


def _interval(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    """'in [0, 1)', '>= 0', '<= 10' or '' (no bounds)."""
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo:g}"
    return "" if hi is None else f"{'<' if hi_open else '<='} {hi:g}"


def float_range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
                hi_open: bool = False) -> Callable[[str], float]:
    """A finite number in the interval from lo to hi (an open end excludes the bound itself)."""
    where = _interval(lo, hi, lo_open, hi_open)

    def parse(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number {where}; got {s!r}".replace(" ;", ";")) from None
        bad = not math.isfinite(v) or (lo is not None and (v <= lo if lo_open else v < lo)) or \
            (hi is not None and (v >= hi if hi_open else v > hi))
        if bad:
            raise argparse.ArgumentTypeError(f"expected a finite number {where}; got {s!r}".replace(" ;", ";"))
        return v
    return parse


def input_size(s: str) -> tuple[int, int]:
    """(H, W) from '224' or 'HxW', each side in [1, MAX_SIDE]."""
    parts = s.strip().lower().split("x")
    ok = len(parts) in (1, 2) and all(p.isascii() and p.isdigit() for p in parts)
    if not ok or not all(1 <= int(p) <= MAX_SIDE for p in parts):
        raise argparse.ArgumentTypeError(f"expected a positive integer or HxW (e.g. 224 or 224x288), at most "
                                         f"{MAX_SIDE} per side; got {s!r}")
    return int(parts[0]), int(parts[-1])


def input_shape(batch: int, chw: Sequence[int], size: tuple[int, int] | None) -> tuple[int, int, int, int]:
    """(batch, C, H, W): `size` (or the default (C, H, W)'s own sides) at `batch`; ValueError when the input would
    be larger than MAX_INPUT_ELEMENTS."""
    c, h, w = chw
    if size is not None:
        h, w = size
    if batch * c * h * w > MAX_INPUT_ELEMENTS:
        raise ValueError(f"--batch {batch} at {h}x{w} is a {batch * c * h * w * 4 / 2 ** 30:.0f} GiB input; "
                         "choose a smaller batch or size")
    return batch, c, h, w


def duration(s: str) -> float:
    """Seconds from '540', '540s', '9m', '1h30m'."""
    from ..train.budget import parse_duration

    try:
        return parse_duration(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def comma_list(choices: Sequence[str] | None = None) -> Callable[[str], tuple[str, ...]]:
    """A non-empty comma-separated list (of `choices`, when given), in the order given, without repeats."""
    some = f" of {','.join(choices)}" if choices else ""

    def parse(s: str) -> tuple[str, ...]:
        items = tuple(dict.fromkeys(p.strip() for p in s.split(",") if p.strip()))
        if not items or (choices and set(items) - set(choices)):
            raise argparse.ArgumentTypeError(f"expected a comma-separated list{some}; got {s!r}")
        return items
    return parse


def _not_dangling(path: Path) -> None:
    if path.is_symlink() and not path.exists():
        raise argparse.ArgumentTypeError(f"{path} is a symbolic link to {os.readlink(path)!r}, which does not "
                                         "exist; give a real path")


def output_file(suffix: str | None = None) -> Callable[[str], Path]:
    """A file path that can be written: not a directory, not a dangling link, no parent that is a file (and ending
    in `suffix`, when given)."""
    def parse(s: str) -> Path:
        path = Path(s)
        if suffix and path.suffix != suffix:
            raise argparse.ArgumentTypeError(f"expected a {suffix} file path; got {s!r}")
        _not_dangling(path)
        try:
            return check_output_file(path, "file")
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return parse


def output_dir(s: str) -> Path:
    """A directory path that is one or can be made: not a file, not a dangling link, no parent that is a file."""
    path = Path(s)
    _not_dangling(path)
    try:
        return check_output_dir(path, "directory")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def input_file(s: str) -> Path:
    """An existing file (a path to a directory or to nothing is refused)."""
    path = Path(s)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"expected an existing file; got {s!r}" +
                                         (" (a directory)" if path.is_dir() else ""))
    return path


def _same(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def check_distinct(outputs: dict[str, Iterable[str | os.PathLike]],
                   inputs: dict[str, str | os.PathLike | None]) -> None:
    """ValueError when a file a command would write (`outputs`: flag -> the paths it writes) is one of the paths
    it reads (`inputs`: what -> path; a value that is no existing path, such as a model name, is skipped)."""
    for what, path in inputs.items():
        if path is None or not Path(path).exists():
            continue
        for flag, written in outputs.items():
            for out in written:
                if _same(Path(out), Path(path)):
                    raise ValueError(f"{flag} would overwrite {what} ({path}); write somewhere else")


def numbers(n: int) -> Callable[[str], tuple[float, ...]]:
    """`n` comma-separated numbers (their ranges are the library's to check)."""
    def parse(s: str) -> tuple[float, ...]:
        try:
            vals = tuple(float(v) for v in s.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {n} comma-separated numbers; got {s!r}") from None
        if len(vals) != n:
            raise argparse.ArgumentTypeError(f"expected {n} comma-separated numbers; got {s!r}")
        return vals
    return parse


def json_object(s: str) -> dict:
    """A JSON object given on the command line."""
    import json

    try:
        d = json.loads(s)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"expected a JSON object; got {s!r} ({e})") from None
    if not isinstance(d, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object; got {s!r}")
    return d


def data_source(s: str) -> str:
    """A data set: 'fashion-mnist', 'synthetic' or an existing directory (an idx directory or an image folder)."""
    if s not in ("fashion-mnist", "synthetic") and not (s and Path(s).is_dir()):
        raise argparse.ArgumentTypeError(f"expected fashion-mnist, synthetic or a data directory; got {s!r}")
    return s
