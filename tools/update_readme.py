"""Rewrite the model table in README.md (between the MODEL TABLE markers) from the registry."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from convscope.cli import markdown_model_table  # noqa: E402

BEGIN, END = "<!-- MODEL TABLE BEGIN (make readme-table) -->", "<!-- MODEL TABLE END -->"


def render(readme: str) -> str:
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{markdown_model_table()}\n{END}{tail}"


if __name__ == "__main__":
    path = ROOT / "README.md"
    path.write_text(render(path.read_text()))
    print(f"updated {path}")
