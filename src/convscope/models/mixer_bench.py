"""The mixer bench: one small MetaFormer skeleton (Yu et al., "MetaFormer Baselines for Vision", arXiv 2210.13452)
at a fixed width and depth where ONLY the token mixer changes, so token mixers can be compared on equal terms
(accuracy, parameters, counted MACs, measured latency): `create_model("mixer_bench_<mixer>")`, trained and timed
by `convscope bench-mixers` (benchmarks/mixer_bench.py).

Skeleton: 7x7/4 stem -> four stages of depths (2, 2, 2, 2), widths (32, 64, 128, 256), stages 2-4 opened by
norm + 3x3/2 conv; each block `norm -> mixer -> residual; norm -> 1x1 MLP (x4, StarReLU) -> residual`; global
pool -> LayerNorm -> Linear. Small inputs: the cards' default is 64x64 (maps of 16, 8, 4 and 2 pixels per side;
large enough for resolution scaling to be smooth), and `convscope bench-mixers` trains every variant on
Fashion-MNIST resized to 32x32 (maps of 8, 4, 2, 1; `create_model("mixer_bench_tvconv", input_size=32)`).
Mixer options are chosen per mixer for those map sizes and listed in `MIXER_OPTIONS`. TVConv's per-position
kernels fix the input size (`input_size`, default 64).

A new mixer joins with a `MIXER_OPTIONS` entry (if it needs options) and one literal variant line
`"mixer_bench_<name>": variant(mixer="<name>", card=_card(P))` below, with P its counted parameters
(`convscope info mixer_bench_<name>`); `bench-mixers` picks up every variant.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from .metaformer import MetaFormer
from .registry import ArchSpec, Card, Paper, register_family, variant
from .traits import ModelTraits

#: Per-mixer options for the bench's map sizes (stage i of an S x S input holds (S / 4 / 2**i)-pixel maps).
MIXER_OPTIONS: dict[str, Any] = {
    "dwconv": dict(kernel_size=7),
    "dilated_reparam": dict(kernel_size=7),            # 7x7 with parallel 5x5 d1 and 3x3 d2 branches
    "dcls": dict(kernel_count=16, dilated_kernel_size=9),  # 16 taps (48 params, ~ a 7x7) in a 9x9 window
    "deform": dict(kernel_size=3, modulated=True),     # depthwise DCNv2
    "sgconv2d": dict(kernel_dim=4, n_scales=3),        # a 16x16 structured kernel
    "wavemix": dict(level=1, mult=1, dropout=0.0),     # one Haar level: the maps are 8x8 at most
}


class MixerBench(MetaFormer):
    """The bench skeleton with one `mixer` (a name in convscope.layers.MIXERS) in every block. Takes inputs
    from 16x16 up (the last stages then hold 1x1 maps); the TVConv variant only `input_size` square."""

    @classmethod
    def traits_for(cls, *, mixer: str, dims: Sequence[int], input_size: int) -> ModelTraits:
        """MetaFormer's, from 16x16 up; TVConv's per-position kernels fix the input size."""
        fixed = (input_size, input_size) if mixer == "tvconv" else None
        return replace(MetaFormer.traits_for(dims=dims, token_mixers=mixer, mixer_kwargs=None),
                       min_input_size=(16, 16), fixed_input_size=fixed)

    def __init__(self, mixer: str, depths=(2, 2, 2, 2), dims=(32, 64, 128, 256), *, input_size: int = 64,
                 in_chans: int = 3, num_classes: int = 1000, drop_rate: float = 0.0, drop_path_rate: float = 0.0
                 ) -> None:
        n = len(depths)
        if mixer == "tvconv":  # per-stage map sizes from the stem (7x7/4, pad 2) and 3x3/2 (pad 1) arithmetic
            side, kwargs = (input_size + 4 - 7) // 4 + 1, []
            for _i in range(n):
                kwargs.append(dict(size=side))
                side = (side - 1) // 2 + 1
        else:
            kwargs = [dict(MIXER_OPTIONS.get(mixer, {})) for _ in range(n)]
        super().__init__(depths, dims, in_chans=in_chans, num_classes=num_classes, token_mixers=mixer,
                         mixer_kwargs=kwargs, drop_rate=drop_rate, drop_path_rate=drop_path_rate)
        self.mixer = mixer
        self.traits = MixerBench.traits_for(mixer=mixer, dims=dims, input_size=input_size)


def _width_quantum(arch: Mapping[str, Any], i: int) -> int:
    return {"attention": 32, "gnconv": 16}.get(arch["mixer"], 8)


def _tvconv_size(arch: Mapping[str, Any], input_hw: tuple[int, int]) -> dict:
    return dict(input_size=input_hw[0]) if arch.get("mixer") == "tvconv" else {}


_SOURCE = "convscope mixer bench (counted)"


def _card(params_m: float) -> Card:
    return Card(params_m=params_m, macs_g=None, top1=None, source=_SOURCE, macs_convention="macs",
                input_size=(3, 64, 64), crop_pct=1.0, interpolation="bilinear", mean=(0.5, 0.5, 0.5),
                std=(0.5, 0.5, 0.5))


register_family(
    "mixer_bench", MixerBench,
    paper=Paper("MetaFormer Baselines for Vision", "2210.13452", "sail-sg/metaformer"),
    spec=ArchSpec(depths="depths", widths="dims", width_quantum=_width_quantum, at_input_size=_tvconv_size),
    arch=dict(depths=(2, 2, 2, 2), dims=(32, 64, 128, 256)),
    card=Card(notes="a benchmark skeleton, not a published model: parameters counted here, no official MACs"),
    variants={
        "mixer_bench_pooling": variant(mixer="pooling", card=_card(2.0461)),
        "mixer_bench_sepconv": variant(mixer="sepconv", card=_card(2.8366)),
        "mixer_bench_dwconv": variant(mixer="dwconv", card=_card(2.0941)),
        "mixer_bench_inception_dw": variant(mixer="inception_dw", card=_card(2.0502)),
        "mixer_bench_gnconv": variant(mixer="gnconv", card=_card(2.7817)),
        "mixer_bench_dilated_reparam": variant(mixer="dilated_reparam", card=_card(2.1421)),
        "mixer_bench_tvconv": variant(mixer="tvconv", card=_card(3.3596)),
        "mixer_bench_dcls": variant(mixer="dcls", card=_card(2.0932)),
        "mixer_bench_deform": variant(mixer="deform", card=_card(2.2892)),
        "mixer_bench_sgconv2d": variant(mixer="sgconv2d", card=_card(2.0932)),
        "mixer_bench_attention": variant(mixer="attention", card=_card(2.7425)),
        "mixer_bench_lsconv": variant(mixer="lsconv", card=_card(2.3062)),
        "mixer_bench_wavemix": variant(mixer="wavemix", card=_card(5.2281)),
    })
