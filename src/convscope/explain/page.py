"""What the explanations look like on disk: heat overlays as PNG, one self-contained HTML page, the ERF heatmap.

An overlay blends the image with a heat colour map at weight ALPHA. The map (`heat_colours`: black, red, yellow,
white) has channels that sum to 3 h, so a pixel's channel sum is (1 - ALPHA) x the image's + ALPHA x 255 x 3 h:
the heat can be read back from an overlay and its image (`heat_from_overlay`). Pillow writes the PNGs and
matplotlib draws the ERF figure; both are imported only when called.
"""
from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..files import atomic_write_bytes

ALPHA = 0.6           # weight of the heat colours in an overlay
DISPLAY_SIDE = 192    # images are enlarged (nearest neighbour, by a whole factor) to at least this side on the page


def unit_heat(h: torch.Tensor) -> torch.Tensor:
    """(H, W) the positive part of `h` scaled so that its maximum is 1 (all zeros stay zeros)."""
    h = h.detach().double().clamp_min(0)
    top = h.max()
    return h / top if top > 0 else h


def heat_colours(h: torch.Tensor) -> torch.Tensor:
    """(3, H, W) in [0, 1] for heat (H, W) in [0, 1]: black -> red -> yellow -> white, channels summing to 3 h."""
    h = h.double().clamp(0, 1)
    return torch.stack([(3 * h).clamp(0, 1), (3 * h - 1).clamp(0, 1), (3 * h - 2).clamp(0, 1)])


def to_rgb(image: torch.Tensor) -> torch.Tensor:
    """uint8 (3, H, W) from uint8 (1, H, W) or (3, H, W)."""
    return image.expand(3, -1, -1) if image.shape[0] == 1 else image


def enlarge(t: torch.Tensor, factor: int) -> torch.Tensor:
    """(..., H * factor, W * factor): each pixel repeated (nearest neighbour)."""
    return t.repeat_interleave(factor, -2).repeat_interleave(factor, -1)


def display_factor(hw: Sequence[int]) -> int:
    """The whole factor that brings the shorter side to at least DISPLAY_SIDE."""
    return max(1, -(-DISPLAY_SIDE // max(1, min(hw))))


def overlay(image: torch.Tensor, heat: torch.Tensor) -> torch.Tensor:
    """uint8 (3, H, W): uint8 `image` (1 or 3, H, W) blended with the colours of `heat` (H, W) in [0, 1]."""
    if image.shape[-2:] != heat.shape:
        raise ValueError(f"the heat map {tuple(heat.shape)} and the image {tuple(image.shape[-2:])} differ in size")
    mixed = (1 - ALPHA) * to_rgb(image).double() + ALPHA * 255 * heat_colours(heat)
    return mixed.round().clamp(0, 255).to(torch.uint8)


def heat_from_overlay(picture: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """(H, W) the heat an `overlay` of `image` holds, to about 1 / (ALPHA x 255 x 3) per rounded channel."""
    total = picture.double().sum(0) - (1 - ALPHA) * to_rgb(image).double().sum(0)
    return (total / (ALPHA * 255 * 3)).clamp(0, 1)


def png_bytes(image: torch.Tensor) -> bytes:
    """A uint8 (1 or 3, H, W) image encoded as PNG (Pillow)."""
    from PIL import Image

    arr = image[0].numpy() if image.shape[0] == 1 else image.permute(1, 2, 0).contiguous().numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


@dataclass(frozen=True)
class ExplainedImage:
    """One image on the page: its PNG as the model saw it, its top classes, and one overlay PNG per method."""

    name: str
    input_png: bytes
    top: list[tuple[str, float]]                   # (class, probability), best first
    overlays: list[tuple[str, str, bytes]]         # (method, explained class, PNG)


_STYLE = ("body{font-family:sans-serif;margin:1.5em;color:#222}figure{display:inline-block;margin:0 .8em .8em 0;"
          "vertical-align:top}figcaption{font-size:.85em;max-width:16em}table{border-collapse:collapse}"
          "td,th{padding:.15em .6em;text-align:left}section{border-top:1px solid #ccc;padding-top:.6em}")


def _section(item: ExplainedImage) -> str:
    rows = "".join(f"<tr><td>{html.escape(c)}</td><td>{p:.3f}</td></tr>" for c, p in item.top)
    figs = [f'<figure><img alt="input" src="{data_uri(item.input_png)}"><figcaption>input (as the model sees '
            f'it)</figcaption></figure>']
    figs += [f'<figure><img alt="{html.escape(m)}" src="{data_uri(png)}"><figcaption>{html.escape(m)} for '
             f'{html.escape(c)}</figcaption></figure>' for m, c, png in item.overlays]
    return (f"<section><h2>{html.escape(item.name)}</h2>{''.join(figs)}<table><tr><th>predicted class</th>"
            f"<th>probability</th></tr>{rows}</table></section>")


def html_page(title: str, lines: Sequence[str], items: Sequence[ExplainedImage]) -> str:
    """One self-contained HTML page (every image an inline data URI, no external file): `lines` of description,
    then one section per image with its input, overlays and predicted classes."""
    head = "".join(f"<p>{html.escape(line)}</p>" for line in lines)
    body = "".join(_section(i) for i in items)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{head}{body}</body></html>\n")


def save_erf_figure(maps: Sequence[tuple[str, torch.Tensor]], path: str | os.PathLike) -> Path:
    """A PNG (matplotlib) of ERF maps side by side, each (H, W) in [0, 1] with its title, one colour scale."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(maps), figsize=(3.2 * len(maps) + 0.8, 3.4), squeeze=False)
    for ax, (title, m) in zip(axes[0], maps, strict=True):
        im = ax.imshow(m.detach().float().numpy(), cmap="RdYlGn_r", vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="log10(1 + contribution), scaled")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


__all__ = ["ALPHA", "ExplainedImage", "data_uri", "display_factor", "enlarge", "heat_colours",
           "heat_from_overlay", "html_page", "overlay", "png_bytes", "save_erf_figure", "to_rgb", "unit_heat"]
