"""docs/operators.md lists every operator in convscope.ops and every registered token mixer."""
from pathlib import Path

import convscope.ops as ops
from convscope.layers.mixers import MIXERS

DOC = (Path(__file__).resolve().parents[2] / "docs" / "operators.md").read_text()
ROWS = [line for line in DOC.splitlines() if line.startswith("| `")]


def test_every_operator_has_a_row():
    missing = [name for name in ops.__all__ if f"`{name}`" not in DOC]
    assert not missing, f"docs/operators.md lacks {missing}"


def test_every_mixer_has_a_row_naming_its_class():
    for name, cls in MIXERS.items():
        rows = [r for r in ROWS if f"(mixer `{name}`)" in r]
        assert len(rows) == 1, f"docs/operators.md needs one row for mixer {name!r}"
        assert f"`{cls.__name__}`" in rows[0], (name, cls.__name__)


def test_rows_have_four_filled_columns():
    for r in ROWS:
        cells = [c.strip() for c in r.strip("|").split("|")]
        assert len(cells) >= 4 and all(cells[:2]) and cells[-1], r
