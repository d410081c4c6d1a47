"""The limits every entry point holds a value to (the CLI's parsers, a recipe read back, a training config), so
that one kind of value is refused the same way wherever it is given."""
from __future__ import annotations

MAX_SIDE = 4096                   # an input side: larger would not fit in memory for any zoo model
MAX_INPUT_ELEMENTS = 2 ** 31 // 4  # batch x C x H x W: an 8 GiB fp32 input
MAX_THREADS = 1024                # torch intra-op threads
