"""How close the deploy form is to the train form: the errors that tests/layers/test_reparam.py and
tests/deploy/test_reparam.py bound, written out.

    PYTHONPATH=src python benchmarks/reparam_equivalence.py [--out benchmarks/results/reparam_equivalence.md]

Model level (float32, every re-parameterisable registered variant, random weights as in the tests, input
2x3x32x64): max |deploy - train| / max |train|, and the same for the train form in float32 against float64, the
floor set by float32 itself. Module level (float64, one instance of every re-parameterisable module type).
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    import torch

    from convscope.deploy import reparameterize_
    from tests.conftest import meta_model, random_model, randomize_, rel_err, reparameterizable_models
    from tests.deploy.test_reparam import _well_conditioned, _x, traced_forward
    from tests.layers.test_reparam import MODULE_CASES

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from reparam_speed import cpu_model

    model_rows = []
    for name in reparameterizable_models():
        model = _well_conditioned(random_model(name, seed=1))
        x = _x()
        with torch.no_grad():
            want = model(x)
            floor = rel_err(want, copy.deepcopy(model).double()(x.double()).float())
        got, problems = traced_forward(reparameterize_(model), x)
        model_rows.append((name, rel_err(got, want), floor, len(problems)))
        print(f"{name:26s} deploy vs train {model_rows[-1][1]:.1e}  (float32 vs float64: {floor:.1e})", flush=True)
        del model

    module_rows = []
    for label, (name, path, chans) in sorted(MODULE_CASES.items()):
        module = copy.deepcopy(meta_model(name).get_submodule(path)).to_empty(device="cpu")
        module = randomize_(module.double(), 5).eval()
        x = torch.randn(1, chans, 40, 42, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        with torch.no_grad():
            want = module(x)
            err = rel_err(reparameterize_(module)(x), want)
        module_rows.append((label, f"{name}: {path}", err))
        print(f"{label:34s} {err:.1e}", flush=True)

    if args.out:
        lines = [
            "# Deploy form vs train form: output errors",
            "",
            f"Command: `PYTHONPATH=src python benchmarks/reparam_equivalence.py --out {args.out}`",
            f"Machine: {cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}. "
            "Error = max|deploy - train| / max|train|.",
            "",
            "Model level, float32, input 2x3x32x64, `randomize_` weights with layer scales x0.1 (see "
            "tests/deploy/test_reparam.py::_well_conditioned); the last column is the train form's own float32 "
            "error against float64.",
            "",
            "| model | deploy vs train (fp32) | BN beside conv / parallel branches left | train fp32 vs fp64 |",
            "|---|---|---|---|",
        ] + [f"| {n} | {e:.1e} | {k} | {f:.1e} |" for n, e, f, k in model_rows] + [
            "",
            "Module level, float64, input 1xCx40x42 (one instance of each type, found in the registry).",
            "",
            "| module type | instance | deploy vs train (fp64) |",
            "|---|---|---|",
        ] + [f"| {a} | `{b}` | {e:.1e} |" for a, b, e in module_rows] + [
            "",
            f"Worst: {max(r[1] for r in model_rows):.1e} (model, fp32), {max(r[2] for r in module_rows):.1e} "
            "(module, fp64).",
        ]
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0 if max(r[1] for r in model_rows) < 1e-5 and max(r[2] for r in module_rows) < 1e-9 else 1


if __name__ == "__main__":
    sys.exit(main())
