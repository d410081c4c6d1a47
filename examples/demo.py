"""The main job, end to end on this machine: pick a model from the zoo, build it, count it, time it."""
from __future__ import annotations

import platform
import statistics
import time

import torch

import convscope

NAME = "convnext_atto"


def main() -> None:
    names = convscope.list_models()
    families = convscope.list_families()
    print(f"convscope {convscope.__version__}: {len(names)} models in {len(families)} families "
          f"({', '.join(families)})\n")

    card = convscope.model_card(NAME)
    model = convscope.create_model(NAME).eval()
    params = sum(p.numel() for p in model.parameters())
    print(f"{NAME}: {card.paper} (arXiv {card.arxiv})")
    print(f"  parameters: {params / 1e6:.3f} M counted, {card.params_m} M official")
    print(f"  official MACs at {card.input_size[1]}x{card.input_size[2]}: {card.macs_g} G; "
          f"official top-1 {card.top1}%")

    print(f"\nlatency on {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, fp32, "
          "median of 20 runs after 5 warm-up runs:")
    for batch in (1, 16):
        x = torch.randn(batch, *card.input_size)
        times = []
        with torch.inference_mode():
            for i in range(25):
                t0 = time.perf_counter()
                model(x)
                if i >= 5:
                    times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        print(f"  batch {batch:2d}: {med * 1e3:7.2f} ms  ({batch / med:7.1f} images/s, "
              f"{card.macs_g * batch / med:6.1f} GMAC/s)")


if __name__ == "__main__":
    main()
