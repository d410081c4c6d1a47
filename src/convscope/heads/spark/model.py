"""SparK masked-image pretraining for the zoo's hierarchical ConvNets (Tian et al., "Designing BERT for
Convolutional Networks: Sparse and Hierarchical Masked Modeling", arXiv 2301.03580, keyu-tian/SparK).

The encoder is the registered model built with `features_only=True` and made sparse in place (`sparsify`); its
stage maps are densified (per-scale sparse BatchNorm, a learned mask token at the masked positions, a
projection) and decoded by a light UNet into the image, scored by per-patch-normalised MSE on masked patches.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ...layers import LayerNorm2d
from ...models import create_model, family_of, list_models, model_arch, model_card, model_traits, resolve_name
from .sparse import SparseBatchNorm, SparseLayerNorm, dense_key_map, sparsify

#: the families SparK serves: every operator is a conv, a pool, a norm or position-wise
SPARK_SERVED = ("convnext", "convnextv2", "inception_next", "unireplknet", "replknet", "hornet", "convformer",
                "poolformer", "poolformerv2", "identityformer")

_ATTENTION = "every output of self-attention weighs all positions, masked ones included, through the softmax"
#: families (and HorNet's GF variants) SparK does not serve, and why
SPARK_UNSUPPORTED = {
    "biformer": f"bi-level routing attention: {_ATTENTION}",
    "caformer": f"stages 3-4 are self-attention: {_ATTENTION}",
    "convit": "a plain ViT at one stride (16) with gated positional self-attention: no hierarchy, and "
              + _ATTENTION,
    "crossvit": "two ViT branches at strides 12 and 16 with cross-attention: no stride-4..32 hierarchy",
    "cvt": "convolutional-projection attention, and only three stages ending at stride 16",
    "glnet": "global slot attention (GLMix) and MHSA blocks mix all positions",
    "halonet": "halo attention weighs every position of each window through the softmax",
    "hornet_gf": "HorNet's GF variants filter the whole map in the FFT domain, so every output reads every "
                 "position, masked ones included",
    "lsnet": f"its last stage is LeViT attention ({_ATTENTION}), and its deepest stride is 64",
    "maxvit": f"block and grid attention: {_ATTENTION}",
    "mixer_bench": "a benchmark harness whose token mixer changes per run (attention, deformable, global), not "
                   "one architecture",
    "moat": f"window attention in stages 3-4: {_ATTENTION}",
    "randformer": "random mixing multiplies the tokens by a dense N x N matrix over all positions",
    "rmt": f"Manhattan self-attention: {_ATTENTION}",
    "transnext": "aggregated attention pools keys over the whole map",
    "volo": "outlook and class attention, and maps at strides 8 and 16 only",
    "wavemix": "every stage runs at stride 4: there is no deepest map to draw one mask at",
}


def _is_gf(name: str) -> bool:
    return any(size is not None for size in model_arch(name).get("gf_sizes") or ())


def spark_families() -> dict[str, list[str]]:
    """Served family -> its variants SparK serves (HorNet without its GF variants)."""
    return {family: [n for n in list_models(family=family) if not (family == "hornet" and _is_gf(n))]
            for family in SPARK_SERVED}


def spark_smallest(family: str) -> str:
    """The served variant of `family` with the fewest parameters (its model card's)."""
    variants = spark_families().get(family)
    if not variants:
        raise ValueError(f"SparK does not serve family {family!r}; it serves {', '.join(SPARK_SERVED)}")
    return min(variants, key=lambda n: model_card(n).params_m)


def _check_served(model_name: str) -> str:
    name = resolve_name(model_name)
    family = family_of(name).name
    if family == "hornet" and _is_gf(name):
        family = "hornet_gf"
    if family not in SPARK_SERVED:
        reason = SPARK_UNSUPPORTED.get(family, "it is not one of the families SparK was checked on")
        raise ValueError(f"SparK does not serve {name} (family {family}): {reason}; it serves "
                         f"{', '.join(SPARK_SERVED)}")
    return name


def spark_loss(prediction: torch.Tensor, images: torch.Tensor, active: torch.Tensor, patch: int) -> torch.Tensor:
    """Mean squared error between `prediction` and the per-patch-normalised `images` (each patch x patch
    patch's pixels less their mean, over sqrt(unbiased variance + 1e-6)), averaged over the MASKED patches
    only (`active`: (B, 1, h, w), True = visible)."""
    target = patchify(images, patch)
    target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
    per_patch = (patchify(prediction, patch) - target).square().mean(-1)
    masked = (~active).flatten(1).to(per_patch.dtype)
    return (per_patch * masked).sum() / (masked.sum() + 1e-8)


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, h*p, w*p) -> (B, h*w, p*p*C), one row per patch."""
    b, c, hh, ww = x.shape
    x = x.reshape(b, c, hh // patch, patch, ww // patch, patch)
    return torch.einsum("bchpwq->bhwpqc", x).reshape(b, (hh // patch) * (ww // patch), patch * patch * c)


def unpatchify(x: torch.Tensor, patch: int, hw: tuple[int, int]) -> torch.Tensor:
    """The inverse of `patchify` for an (h, w) grid of patches."""
    b, (h, w) = x.shape[0], hw
    x = x.reshape(b, h, w, patch, patch, -1)
    return torch.einsum("bhwpqc->bchpwq", x).reshape(b, -1, h * patch, w * patch)


class UNetBlock(nn.Module):
    """x2 upsampling by a 4x4/2 transposed conv, then conv3x3-BN-ReLU6-conv3x3-BN."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.up_sample = nn.ConvTranspose2d(cin, cin, kernel_size=4, stride=2, padding=1)
        self.conv = nn.Sequential(nn.Conv2d(cin, cin, 3, padding=1, bias=False), nn.BatchNorm2d(cin),
                                  nn.ReLU6(inplace=True), nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.up_sample(x))


class LightDecoder(nn.Module):
    """SparK's light UNet: log2(ratio) UNet blocks halving the width from `width`, each densified scale (deepest
    first) added before its block, then a 1x1 conv to `out_chans`."""

    def __init__(self, ratio: int, width: int, out_chans: int) -> None:
        super().__init__()
        widths = [width // 2 ** i for i in range(round(math.log2(ratio)) + 1)]
        self.width = width
        self.dec = nn.ModuleList(UNetBlock(cin, cout) for cin, cout in zip(widths[:-1], widths[1:], strict=True))
        self.proj = nn.Conv2d(widths[-1], out_chans, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.ConvTranspose2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, scales: list[torch.Tensor]) -> torch.Tensor:
        x: torch.Tensor | float = 0.0
        for i, block in enumerate(self.dec):
            if i < len(scales):
                x = x + scales[i]
            x = block(x)
        return self.proj(x)


def _pair(input_size: int | tuple[int, int]) -> tuple[int, int]:
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
        raise ValueError(f"SparK input_size must be a positive int or an (H, W) pair of them; got {input_size!r}")
    return size


def _check_options(mask_ratio: float, decoder_width: int | None) -> None:
    if not isinstance(mask_ratio, (int, float)) or isinstance(mask_ratio, bool) or not 0 < mask_ratio < 1:
        raise ValueError(f"SparK mask_ratio must be a number strictly between 0 and 1; got {mask_ratio!r}")
    if decoder_width is not None and (not isinstance(decoder_width, int) or decoder_width < 1):
        raise ValueError(f"SparK decoder_width must be a positive int or None; got {decoder_width!r}")


class SparK(nn.Module):
    """SparK pretraining of `model_name`'s encoder on `input_size` images: `forward(images)` is the loss.

    mask_ratio: the share of deepest-map positions masked (0.6 keeps 40%).
    decoder_width: the first decoder block's width (halved per block); None takes the deepest stage's channels.
    model_kwargs go to `create_model` (and must be passed to it again to load `encoder_state_dict()`).
    """

    def __init__(self, model_name: str, *, in_chans: int = 3, input_size: int | tuple[int, int] = 224,
                 mask_ratio: float = 0.6, decoder_width: int | None = None, **model_kwargs) -> None:
        super().__init__()
        name = _check_served(model_name)
        self.input_size = _pair(input_size)
        _check_options(mask_ratio, decoder_width)
        self.model_name, self.in_chans, self.mask_ratio = name, in_chans, float(mask_ratio)
        traits = model_traits(name, **model_kwargs)  # the strides and widths, checked before anything is built
        channels, strides = list(traits.channels), list(traits.reductions)
        self.downsample_ratio = strides[-1]
        self._check_hierarchy(strides)
        width = decoder_width if decoder_width is not None else channels[-1]
        if width < self.downsample_ratio:
            raise ValueError(f"SparK decoder_width must be at least {self.downsample_ratio} (it is halved "
                             f"{round(math.log2(self.downsample_ratio))} times); got {width}")
        self.fmap = (self.input_size[0] // self.downsample_ratio, self.input_size[1] // self.downsample_ratio)
        self.len_keep = max(1, round(self.fmap[0] * self.fmap[1] * (1 - self.mask_ratio)))
        self.encoder = create_model(name, features_only=True, in_chans=in_chans, **model_kwargs)
        self.mask = sparsify(self.encoder)
        self.decoder = LightDecoder(self.downsample_ratio, width, in_chans)
        self._build_densify(channels[::-1], width)

    def _check_hierarchy(self, strides: list[int]) -> None:
        r = self.downsample_ratio
        if r & (r - 1) or strides[::-1] != [r // 2 ** i for i in range(len(strides))]:
            raise ValueError(f"SparK needs stage strides that halve from a power-of-two deepest stride; "
                             f"{self.model_name} has {strides}")
        if self.input_size[0] % r or self.input_size[1] % r:
            raise ValueError(f"SparK input_size must be a multiple of {self.model_name}'s deepest stride {r}; "
                             f"got {self.input_size[0]}x{self.input_size[1]}")

    def _build_densify(self, channels: list[int], width: int) -> None:
        """Per scale, deepest first: a sparse norm of the encoder's own kind (`densify_norm`: BatchNorm when the
        encoder has one, as the official code gives ResNets; else LayerNorm, as it gives ConvNeXt), a mask token,
        and a projection to the decoder's width (identity where the widths agree at the deepest scale, else 1x1
        there and 3x3 above)."""
        has_bn = any(isinstance(m, nn.BatchNorm2d) for m in self.encoder.modules())
        self.densify_norm = "bn" if has_bn else "ln"
        self.densify_norms = nn.ModuleList(
            SparseBatchNorm(nn.BatchNorm2d(c), self.mask) if has_bn else SparseLayerNorm(LayerNorm2d(c), self.mask)
            for c in channels)
        self.mask_tokens = nn.ParameterList()
        self.densify_projs = nn.ModuleList()
        for i, c in enumerate(channels):
            token = nn.Parameter(torch.zeros(1, c, 1, 1))
            nn.init.trunc_normal_(token, std=0.02, a=-0.02, b=0.02)
            self.mask_tokens.append(token)
            d = width // 2 ** i
            k = 1 if i == 0 else 3
            self.densify_projs.append(nn.Identity() if i == 0 and c == d else nn.Conv2d(c, d, k, padding=k // 2))

    def random_active(self, batch: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """A bool (batch, 1, h, w) map at the deepest stride, `len_keep` random positions True (visible)."""
        h, w = self.fmap
        keep = torch.rand(batch, h * w, generator=generator).argsort(dim=1)[:, :self.len_keep]
        active = torch.zeros(batch, h * w, dtype=torch.bool).scatter_(1, keep, True)
        return active.view(batch, 1, h, w).to(device)

    def _check(self, images: torch.Tensor, active: torch.Tensor | None) -> torch.Tensor:
        want = (self.in_chans, *self.input_size)
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or tuple(images.shape[1:]) != want:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"SparK expects images of shape (B, {want[0]}, {want[1]}, {want[2]}); got {shape}")
        if active is None:
            return self.random_active(images.shape[0], device=images.device)
        if active.dtype != torch.bool or tuple(active.shape) != (images.shape[0], 1, *self.fmap):
            raise ValueError(f"SparK expects active as a bool ({images.shape[0]}, 1, {self.fmap[0]}, "
                             f"{self.fmap[1]}) map (True = visible); got {active.dtype} {tuple(active.shape)}")
        return active.to(images.device)

    def _predict(self, images: torch.Tensor, active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the decoder's prediction, the masked input). The mask stays set after the forward: a backward that
        recomputes checkpointed blocks (`set_grad_checkpointing`) must see the same one."""
        self.mask.set(active)
        masked = images * self.mask.at(*images.shape[-2:])
        scales = []
        for i, fmap in enumerate(reversed(self.encoder(masked))):
            fmap = self.densify_norms[i](fmap)
            fmap = torch.where(self.mask.like(fmap), fmap, self.mask_tokens[i].expand_as(fmap))
            scales.append(self.densify_projs[i](fmap))
        return self.decoder(scales), masked

    def forward(self, images: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
        """The reconstruction loss of `images` with `active` visible (None draws a random mask)."""
        active = self._check(images, active)
        prediction, _ = self._predict(images, active)
        return spark_loss(prediction, images, active, self.downsample_ratio)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, active: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(masked input, the prediction de-normalised per patch with the visible patches pasted from the input,
        the (B, 1, H, W) pixel mask, True where visible), for a reconstruction figure; call it in eval mode, or
        the batch statistics of this batch are used and the running ones updated."""
        active = self._check(images, active)
        prediction, masked = self._predict(images, active)
        r = self.downsample_ratio
        target = patchify(images, r)
        mean, std = target.mean(-1, keepdim=True), (target.var(-1, keepdim=True) + 1e-6).sqrt()
        image_space = unpatchify(patchify(prediction, r) * std + mean, r, self.fmap)
        pixels = active.repeat_interleave(r, dim=2).repeat_interleave(r, dim=3)
        return masked, torch.where(pixels, images, image_space), pixels

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder's weights under `create_model(model_name, in_chans=...)`'s keys (no classifier head)."""
        keys = dense_key_map(self.encoder)
        return {keys[k].removeprefix("model."): v for k, v in self.encoder.state_dict().items()}
