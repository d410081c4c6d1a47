"""The model lists the deploy suites walk: every registered variant (meta device), and each family's smallest."""
from __future__ import annotations

import functools

from convscope.models import list_models, model_card

from ..conftest import meta_param_count


@functools.lru_cache(maxsize=None)
def smallest_per_family() -> list[str]:
    """The smallest registered variant of every family (by parameter count), sorted by name."""
    best: dict[str, tuple[int, str]] = {}
    for n in list_models():
        p = sum(meta_param_count(n))
        fam = model_card(n).family
        if fam not in best or p < best[fam][0]:
            best[fam] = (p, n)
    return sorted(n for _, n in best.values())
