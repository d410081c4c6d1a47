"""Counted MACs against the official figures of every registered variant.

Each ModelCard's `macs_g` is compared with `count()` at the card's input size, under the convention the card
names (`ModelCard.macs_convention`; see `counting.MACS_CONVENTIONS`), on the form of the network the figure
counts (`ModelCard.macs_form`: the re-parameterised deploy form for RepLKNet and UniRepLKNet). A figure is
reproduced when the count agrees with it to the published precision (rounding, as timm's tables do, or
truncating, as the sail-sg/metaformer README does: ConvFormer-S18 3.959 -> "3.9", gives the figure) and is within
1% of it, or within the figure's own rounding where that is coarser (UniRepLKNet-A's 0.642 G printed "0.6").
`MACS_EXCEPTIONS` lists the variants that miss the 1% bound, each with the reason and the error it is
allowed instead.

    PYTHONPATH=src python benchmarks/macs_fidelity.py      # the table for every registered variant
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..models import create_model, list_models, model_card
from .counting import count

REL_TOL = 0.01


@dataclass(frozen=True)
class MacsException:
    """Why a variant's official figure is not reproduced within 1%, and the bound it is held to instead."""

    reason: str
    max_rel_err: float  # the bound the variant is held to instead of REL_TOL


MACS_EXCEPTIONS: dict[str, MacsException] = {
    # The sail-sg/metaformer README truncates to one decimal (ConvFormer-S18 3.959 -> 3.9, M36 12.888 -> 12.8,
    # CAFormer-M36 13.286 -> 13.2); where the count does not even round to the printed figure, it is listed here.
    "randformer_s24": MacsException(
        "README truncates to one decimal: 3.568 G (IdentityFormer-S24's 3.416 G plus the 152.4 M MACs of the "
        "random token mixing, 12 blocks x 196^2 x 320 + 4 x 49^2 x 512) is printed 3.5, a 1.9% gap", 0.02),
    # fvcore in eval mode gives 0.5049 G (0.50); with BatchNorm in training mode (5 instead of 2 per element)
    # it gives 0.5077 G, which rounds to the README's 0.51 (as tiny's 4.2035 / 4.1946 both round to 4.2).
    "inception_next_atto": MacsException(
        "the README's 0.51 G is not reproduced in eval mode (fvcore on the same network: 0.5049 G, -1.0%); "
        "counting its 0.95 M BatchNorm elements in training mode gives 0.5077 G, which rounds to 0.51: "
        "likely how it was measured (unverified; timm has no figure for atto)", 0.012),
    # The microsoft/CvT README's 224 figures and W24's are not what its own code counts: ptflops 0.7.5 (the
    # repository's counter) with its Attention.compute_macs hook gives 4.580 / 7.199 / 194.55 G on cls_cvt.py
    # @f851e68, while the 384 variants (16.33, 24.94) match the README.
    "cvt_13_224": MacsException(
        "README prints 4.5 G, but the official code's own counter gives 4.580 G (ours 4.585 G, fvcore "
        "convention): a 1.9% gap in the published figure, not in the network", 0.02),
    "cvt_21_224": MacsException(
        "README prints 7.1 G, but the official code's own counter gives 7.199 G (ours 7.206 G, fvcore "
        "convention): a 1.5% gap in the published figure, not in the network", 0.016),
    "cvt_w24_384": MacsException(
        "README prints 193.2 G, but the official code's own counter gives 194.55 G (ours 194.49 G): within "
        "1%, yet not the printed figure", 0.01),
    # MOAT's large models: counted within 0.6% of the official figures without position embedding (53.8 / 266.1 /
    # 640.6 G), while the with-PE figures add 0.5 / 4.9 / 7.9 G that the relative bias itself does not cost.
    "moat_2": MacsException(
        "official 54.3 G with position embedding; the count, 53.565 G (fvcore convention), is 0.4% below the "
        "official no-PE figure 53.8 G: the PE figure's extra 0.5 G is unexplained (TF's relative-position "
        "reindexing, unverified)", 0.015),
    "moat_3": MacsException(
        "official 271.0 G with position embedding; the count, 264.39 G, is 0.6% below the official no-PE figure "
        "266.1 G: the PE figure's extra 4.9 G is unexplained (TF's relative-position reindexing, unverified)",
        0.025),
    "moat_4": MacsException(
        "official 648.5 G with position embedding; the count, 637.85 G, is 0.4% below the official no-PE figure "
        "640.6 G: the PE figure's extra 7.9 G is unexplained (TF's relative-position reindexing, unverified)",
        0.017),
    "glnet_9g": MacsException(
        "README prints 9.7 G; the count, 9.626 G (fvcore convention), is within 1% but rounds to 9.6, while the "
        "4G, 16G and STL variants round to theirs (fvcore on the official code gives 9.308 G)", 0.01),
}


@dataclass(frozen=True)
class MacsFidelity:
    """One variant's counted MACs (G) next to its official figure."""

    name: str
    official_g: float
    convention: str
    counted_g: float        # under the card's convention
    pure_macs_g: float      # conv / matmul multiply-accumulates only
    input_size: tuple

    @property
    def rel_err(self) -> float:
        return self.counted_g / self.official_g - 1

    @property
    def decimals(self) -> int:
        """Decimals the official figure is printed with (its shortest repr; 34.40 reads as 34.4, 187.0 as 187)."""
        if float(self.official_g).is_integer():
            return 0
        text = repr(float(self.official_g))
        return len(text.split(".")[1]) if "." in text and "e" not in text else 0

    @property
    def matches_published(self) -> bool:
        """The count, rounded or truncated to the figure's decimals, gives the figure."""
        scale = 10 ** self.decimals
        rounded = round(self.counted_g * scale)
        truncated = math.floor(self.counted_g * scale + 1e-9)
        return round(self.official_g * scale) in (rounded, truncated)

    @property
    def rounding_tolerance(self) -> float:
        """Half a unit of the figure's last printed digit, relative to the figure: a count this close rounds to it."""
        return 0.5 / 10 ** self.decimals / self.official_g

    @property
    def tolerance(self) -> float:
        """The listed exception's bound; else 1%, or the figure's own rounding when the count rounds to it (a
        one-decimal 0.6 G cannot be held to 1%)."""
        exc = MACS_EXCEPTIONS.get(self.name)
        if exc:
            return exc.max_rel_err
        return max(REL_TOL, self.rounding_tolerance) if self.matches_published else REL_TOL

    @property
    def ok_without_exception(self) -> bool:
        """Within 1% (or the figure's rounding) and rounding to the published figure, with no exception."""
        bound = max(REL_TOL, self.rounding_tolerance) if self.matches_published else REL_TOL
        return self.matches_published and abs(self.rel_err) <= bound

    @property
    def ok(self) -> bool:
        within = abs(self.rel_err) <= self.tolerance
        return within and (self.matches_published or self.name in MACS_EXCEPTIONS)


def macs_fidelity(name: str) -> MacsFidelity | None:
    """Counted vs official MACs of a registered variant; None when its card has no official figure."""
    card = model_card(name)
    if card.macs_g is None:
        return None
    with torch.device("meta"):
        model = create_model(card.name, deploy=card.macs_form == "deploy")
    r = count(model, (1, *card.input_size))
    return MacsFidelity(card.name, card.macs_g, card.macs_convention, r.macs_as(card.macs_convention) / 1e9,
                        r.totals.macs / 1e9, tuple(card.input_size))


def fidelity_table(names: list[str] | None = None) -> str:
    """A markdown table of counted vs official MACs (G) for `names` (default: every registered variant)."""
    rows = ["| model | input | official (G) | convention | counted (G) | error | pure MACs (G) | status |",
            "|---|---|---|---|---|---|---|---|"]
    for name in names or list_models():
        f = macs_fidelity(name)
        if f is None:
            rows.append(f"| `{name}` | | - | | | | | no official figure |")
            continue
        status = "ok" if f.ok and name not in MACS_EXCEPTIONS else \
            f"exception: {MACS_EXCEPTIONS[name].reason}" if f.ok else "MISMATCH"
        rows.append(f"| `{name}` | {f.input_size[1]}x{f.input_size[2]} | {f.official_g:g} | {f.convention} | "
                    f"{f.counted_g:.4f} | {100 * f.rel_err:+.2f}% | {f.pure_macs_g:.4f} | {status} |")
    return "\n".join(rows)

