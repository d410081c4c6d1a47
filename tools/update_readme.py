"""Rewrite the generated parts of README.md: the model table (between the MODEL TABLE markers) from the registry,
the mixer bench table (between the MIXER BENCH markers) from the recorded run, benchmarks/results/mixer_bench.json,
and the Layout section (between the LAYOUT markers) from the source tree: each package's and top-level module's
docstring, its first sentence, and its modules."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import ast  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import textwrap  # noqa: E402

from convscope.bench.mixers import MixerBenchResult, markdown_table  # noqa: E402
from convscope.cli.models import markdown_model_table  # noqa: E402

BEGIN, END = "<!-- MODEL TABLE BEGIN (make readme-table) -->", "<!-- MODEL TABLE END -->"
BENCH_BEGIN, BENCH_END = "<!-- MIXER BENCH BEGIN (make readme-table) -->", "<!-- MIXER BENCH END -->"
LAYOUT_BEGIN, LAYOUT_END = "<!-- LAYOUT BEGIN (make readme-table) -->", "<!-- LAYOUT END -->"
MIXER_BENCH = ROOT / "benchmarks" / "results" / "mixer_bench.json"
PACKAGE = ROOT / "src" / "convscope"
#: the folders beside the package, described by hand (they have no docstring to read)
OTHER_FOLDERS = [
    ("tests/", "mirrors src/convscope/; tests/data/ holds recorded fixtures (official key lists)"),
    ("benchmarks/", "scripts, their index (benchmarks/README.md), and results/ with the machine of each figure"),
    ("tools/", "scripts that regenerate pages from the registry and the recorded runs"),
    ("docs/", "architecture.md (how it is built, how to add a family, operator or transform), conventions.md, "
              "deploy.md, export.md, operators.md, weights.md, segmentation.md, explain.md, training.md"),
]


def _first_sentence(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    text = " ".join(doc.split("\n\n", 1)[0].split())
    match = re.match(r"(.+?\.)(\s|$)", text)
    return (match.group(1) if match else text).rstrip(".")


def layout() -> str:
    """The Layout block: one entry per package (its docstring's first sentence and its modules) and per
    top-level module, wrapped to 120 columns."""
    entries = []
    for item in sorted(PACKAGE.iterdir()):
        if item.is_dir() and (item / "__init__.py").is_file():
            modules = sorted(p.stem if p.is_file() else f"{p.name}/" for p in item.iterdir()
                             if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file())
            text = _first_sentence(item / "__init__.py") + (f" ({', '.join(modules)})" if modules else "")
            entries.append((f"{item.name}/", text))
        elif item.suffix == ".py" and item.stem not in ("__init__", "__main__"):
            entries.append((item.name, _first_sentence(item)))
    lines = ["src/convscope/"]
    for name, text in [("__init__.py", _first_sentence(PACKAGE / "__init__.py")), *entries]:
        lines += textwrap.wrap(text, 120, initial_indent=f"  {name:<16} ", subsequent_indent=" " * 19)
    for name, text in OTHER_FOLDERS:
        lines += textwrap.wrap(text, 120, initial_indent=f"{name:<19}", subsequent_indent=" " * 19)
    return "```\n" + "\n".join(lines) + "\n```"


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
    readme = _replace(readme, LAYOUT_BEGIN, LAYOUT_END, layout())
    return _replace(readme, BENCH_BEGIN, BENCH_END, mixer_bench_table())


if __name__ == "__main__":
    path = ROOT / "README.md"
    path.write_text(render(path.read_text()))
    print(f"updated {path}")
