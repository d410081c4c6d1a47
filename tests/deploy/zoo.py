"""The model lists the deploy suites walk: every registered variant (meta device), and each family's smallest."""
from __future__ import annotations

import functools

from convscope.models import list_models, model_card

from ..conftest import meta_param_count


@functools.cache
def smallest_per_family() -> list[str]:
    """The smallest registered variant of every family (by parameter count), sorted by name."""
    best: dict[str, tuple[int, str]] = {}
    for n in list_models():
        p = sum(meta_param_count(n))
        fam = model_card(n).family
        if fam not in best or p < best[fam][0]:
            best[fam] = (p, n)
    return sorted(n for _, n in best.values())


#: The BatchNorms `prepare_for_inference` leaves, per family: (pattern of their module paths, why no neighbouring
#: layer can take their affine map exactly). test_fold holds every variant to exactly this: each BatchNorm left
#: matches a pattern of its family, and each pattern matches at least one BatchNorm left, so a new unexplained
#: BatchNorm and one that becomes foldable both fail. docs/deploy.md lists the same (test_deploy_doc_lists_them).
UNFOLDABLE: dict[str, list[tuple[str, str]]] = {
    "halonet": [(r"stages\.\d+\.\d+\.post_attn",
                 "after halo attention, followed by its activation: halo attention zero-pads keys and values after "
                 "the kv projection and the padded positions take part in the softmax, so a shift folded into the "
                 "values would miss them (the scale alone would fold)")],
    "lsnet": [(r"stages\.\d+\.blocks\.\d+\.mixer\.bn",
               "after SKA (per-position kernels generated from the input, shared by interleaved channel groups, so "
               "a per-channel scale cannot enter them), and its output goes into the residual sum, not a linear "
               "layer; the official deploy form keeps it too")],
    "mixer_bench_lsconv": [(r"stages\.\d+\.blocks\.\d+\.token_mixer\.bn",
                            "LS conv's BatchNorm after SKA, as in lsnet")],
    "wavemix": [(r"stem\.4",
                 "the stem's last BatchNorm, after a GELU: its output is the residual stream of the first block "
                 "(x + mixer(x)), which no single linear layer reads")],
    "wavemix_256_16_l4": [],  # the strided stem (two convs) has no BatchNorm; its feed-forward BatchNorms fold
}
#: Families whose re-parameterised form still holds conv / BatchNorm pairs or parallel convs that a block-level
#: `reparameterize()` could merge (the trace in test_reparam finds them): none now.
PENDING_REPARAM: dict[str, str] = {}


def unfoldable(name: str) -> list[tuple[str, str]]:
    """The declared unfoldable BatchNorms of `name`'s family (by model name first, then family)."""
    return UNFOLDABLE[name] if name in UNFOLDABLE else UNFOLDABLE.get(model_card(name).family, [])


def pending(name: str, table: dict[str, str]) -> str | None:
    """Why `name` is listed in `table` (by name or by family), or None."""
    return table.get(name) or table.get(model_card(name).family)
