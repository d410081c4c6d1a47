"""Fixtures of the lab's chart tests."""
from __future__ import annotations

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from convscope.analysis import plots


@pytest.fixture
def figures(monkeypatch):
    """Every figure a chart function renders, drawn (instead of the PNG bytes)."""
    drawn = []

    def keep(fig, path):
        FigureCanvasAgg(fig)
        fig.canvas.draw()
        drawn.append(fig)
        return b""

    monkeypatch.setattr(plots, "_png", keep)
    return drawn
