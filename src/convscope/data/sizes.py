"""The model input size for a data set, decided in one place from plain facts, with the reason it was chosen.

The facts about the model come as arguments (its minimum side, fixed size, input multiple, card side and the
stride of its last stage), so the decision needs no built model.
"""
from __future__ import annotations

from collections.abc import Sequence


def _checked_request(requested: int, name: str, min_side: int, fixed: Sequence[int] | None,
                     multiple: int) -> tuple[tuple[int, int], str]:
    """The user's --input-size, refused when the model cannot take it."""
    if fixed is not None and (requested, requested) != tuple(fixed):
        raise ValueError(f"{name} only takes {fixed[0]}x{fixed[1]} inputs; got --input-size {requested}")
    if requested < min_side:
        raise ValueError(f"{name} needs inputs of at least {min_side}x{min_side}; got --input-size {requested}")
    if requested % multiple:
        raise ValueError(f"{name} takes input sides that are multiples of {multiple}; got --input-size {requested}")
    return (requested, requested), ""


def _file_side(native: tuple[int, int], name: str, min_side: int, card_side: int,
               last_stride: int) -> tuple[int, str]:
    """The side images decoded from files train at: the card's side for images at least that large; smaller ones
    at their own side raised to the larger of the model's minimum and its useful side (twice the last stage's
    stride: the smallest input whose last feature map is still 2x2), never above the card's side."""
    side = max(native)
    if side >= card_side:
        return card_side, ""
    useful = 2 * last_stride
    chosen = min(card_side, max(side, min_side, useful))
    data = f"the data's {native[0]}x{native[1]}"
    if chosen == side:
        return side, ""
    if chosen == useful and useful > min_side:
        return chosen, (f"{data} raised to {chosen}: the smallest size at which {name}'s last stage "
                        f"(stride {last_stride}) still sees 2x2")
    if chosen == min_side:
        return chosen, f"{data} raised to the model's minimum"
    return chosen, f"{data} raised to {chosen}, the model card's size"


def decide_input_size(native: Sequence[int], requested: int | None = None, *, name: str, min_side: int = 1,
                      fixed: Sequence[int] | None = None, multiple: int = 1, card_side: int = 0,
                      last_stride: int = 0, from_files: bool = True) -> tuple[tuple[int, int], str]:
    """The model input (h, w) for images of `native` (h, w), and why it differs from the native size ("" when it
    does not need saying: the user asked for it, or large images take the card's size).

    - `requested` (--input-size) is taken as asked, and refused (ValueError) below `min_side`, off `multiple` or
      unlike a `fixed` size;
    - a model with a `fixed` input size takes only that;
    - images decoded from files (`from_files`): the card's side, or for smaller images their own side raised to
      the minimum and to the useful side `2 * last_stride` (at most the card's side);
    - images held in memory (Fashion-MNIST, synthetic) keep their native size, raised to the minimum;
    - the chosen sides are then rounded up to a multiple of `multiple`.
    """
    native = (int(native[0]), int(native[1]))
    multiple = max(1, int(multiple))
    if requested is not None:
        return _checked_request(int(requested), name, min_side, fixed, multiple)
    if from_files:
        side, why = _file_side(native, name, min_side, card_side, last_stride)
        size = (side, side)
    else:
        size = (max(native[0], min_side), max(native[1], min_side))
        why = "" if size == native else f"the data's {native[0]}x{native[1]} raised to the model's minimum"
    if fixed is not None:
        fixed = (int(fixed[0]), int(fixed[1]))
        if fixed == size or fixed == native:
            return fixed, why if fixed == size else ""
        return fixed, "the only size the model takes"
    rounded = (-(-size[0] // multiple) * multiple, -(-size[1] // multiple) * multiple)
    if rounded != size:
        why = (f"{why}, rounded up to {rounded[0]}x{rounded[1]}" if why else
               f"the data's {native[0]}x{native[1]} rounded up to {rounded[0]}x{rounded[1]}") + \
              f" (multiples of {multiple}, as {name} needs)"
    return rounded, why
