"""The README's model table is generated from the registry and must be current."""
from pathlib import Path

from tools.update_readme import render

README = Path(__file__).resolve().parents[1] / "README.md"


def test_model_table_is_current():
    text = README.read_text()
    assert render(text) == text, "README model table is stale: run `make readme-table`"
