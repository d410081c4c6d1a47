"""Rewrite the generated tables of README.md: the model table (between the MODEL TABLE markers) from the registry,
and the mixer bench table (between the MIXER BENCH markers) from the recorded run,
benchmarks/results/mixer_bench.json."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import json  # noqa: E402

from convscope.bench.mixers import MixerBenchResult, markdown_table  # noqa: E402
from convscope.cli.models import markdown_model_table  # noqa: E402

BEGIN, END = "<!-- MODEL TABLE BEGIN (make readme-table) -->", "<!-- MODEL TABLE END -->"
BENCH_BEGIN, BENCH_END = "<!-- MIXER BENCH BEGIN (make readme-table) -->", "<!-- MIXER BENCH END -->"
MIXER_BENCH = ROOT / "benchmarks" / "results" / "mixer_bench.json"


def mixer_bench_table() -> str:
    from convscope.analysis.hardware import describe_machine

    result = MixerBenchResult.from_dict(json.loads(MIXER_BENCH.read_text()))
    s = result.settings
    return (f"{markdown_table(result)}\n({s['epochs']} epochs on the first {s['limit_train']:,} training images, "
            f"top-1 on {s['limit_eval']:,} test images; latency at batch {s['latency_batch']}, {s['threads']} "
            f"thread(s), every form timed interleaved, load average {s.get('load_average_timing', 'not recorded')}; "
            f"{describe_machine(result.machine)}.)")


def _replace(text: str, begin: str, end: str, body: str) -> str:
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body}\n{end}{tail}"


def render(readme: str) -> str:
    readme = _replace(readme, BEGIN, END, markdown_model_table())
    return _replace(readme, BENCH_BEGIN, BENCH_END, mixer_bench_table())


if __name__ == "__main__":
    path = ROOT / "README.md"
    path.write_text(render(path.read_text()))
    print(f"updated {path}")
