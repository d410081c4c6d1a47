"""docs/weights.md is what tools/weights_table.py makes of the registry."""
from __future__ import annotations

from convscope.models.pretrained.registry import RELEASES
from tools import weights_table


def test_weights_page_is_current():
    page = weights_table.OUT.read_text(encoding="utf-8")
    assert page == weights_table.render(), "docs/weights.md is out of date: run python tools/weights_table.py"
    assert all(f"`{r.tag}`" in page for r in RELEASES)
