"""Plain-text and markdown tables: the one writer every summary, CLI listing and results page uses."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _cells(rows: Sequence[Sequence[Any]]) -> list[list[str]]:
    return [[str(c) for c in r] for r in rows]


def text_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None,
               rule: str = "-") -> str:
    """Columns padded to their widest cell, two spaces apart, a rule of `rule` under the header.

    align: one letter per column, 'l' or 'r' (default: the first column left, the others right).
    Trailing spaces are stripped from every line.
    """
    headers = [str(h) for h in headers]
    body = _cells(rows)
    align = align or "l" + "r" * (len(headers) - 1)
    if len(align) != len(headers) or set(align) - {"l", "r"}:
        raise ValueError(f"align needs one of 'l'/'r' per column ({len(headers)}); got {align!r}")
    widths = [max([len(h)] + [len(r[i]) for r in body]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        padded = (c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(cells, widths, align, strict=False))
        return "  ".join(padded).rstrip()

    lines = [line(headers)]
    if rule:
        lines.append(line([rule * w for w in widths]))
    return "\n".join(lines + [line(r) for r in body])


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A GitHub markdown table; align as in `text_table` (default: no alignment markers, '---')."""
    marks = ["---:" if a == "r" else "---" for a in align] if align else ["---"] * len(headers)
    out = ["| " + " | ".join(str(h) for h in headers) + " |", "|" + "|".join(marks) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in _cells(rows)]
    return "\n".join(out)
