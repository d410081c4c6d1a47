"""Compare convscope models with the official repositories' own model code.

The official code is read at run time from clones of the official repositories, which the caller names; none of
it is part of convscope. For each pair, the official model gets random weights, its state dict goes through
`load_checkpoint(..., source="official")`, and the logits are compared at 224x224 and at a non-square size.

    python benchmarks/official_parity.py --official-root DIR [--official FAMILY=PATH ...]
        [--families convnext,metaformer] [--models convnext_tiny,...] [--write-keys tests/data/official_keys]
        [--out FILE.md | --merge FILE.md]

A family's code is found at PATH given by `--official FAMILY=PATH`, else under `--official-root DIR` as
DIR/<name> (what `git clone` makes) or DIR/<owner>+<name>/repo or DIR/<owner>+<name> (a git mirror). PATH is a
checked-out source tree or a git directory, bare included (its files are read with `git show HEAD:...`). The
families and their repositories are listed by --help.

--models restricts the run to some of our variants (their families are implied). --merge updates an existing
results page instead of writing a new one: the rows of the variants run replace that page's rows of the same
variants in place (a variant new to the page goes after the last row from the same official repository), and the
page's header gains a line with the command, the machine and the date of the run.

--write-keys records each checked official state dict's key names and shapes as JSON, the fixtures with which
tests/models/test_official_keys.py checks the converters without the official code.

For families whose official code has a deploy (re-parameterised) form (OFFICIAL_DEPLOY), each pair is also
checked after re-parameterisation: `reparameterize_model(ours)` against the official model after its own
re-parameterisation method(s), and the official deploy-form state dict loaded through
`create_model(name, deploy=True, pretrained=...)`. Those key layouts go to `<write-keys>_deploy/`.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import platform
import re
import subprocess
import sys
import tempfile
import types
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

# family -> (GitHub repository, files to load as modules (first is the model file), {ours: official constructor})
OFFICIAL: dict[str, tuple[str, list[str], dict[str, str]]] = {
    "convnext": ("facebookresearch/ConvNeXt", ["models/convnext.py"], {
        "convnext_atto": "ConvNeXt(depths=[2, 2, 6, 2], dims=[40, 80, 160, 320])",
        "convnext_tiny": "convnext_tiny()", "convnext_small": "convnext_small()",
    }),
    "convnextv2": ("facebookresearch/ConvNeXt-V2", ["models/convnextv2.py", "models/utils.py"], {
        "convnextv2_atto": "convnextv2_atto()", "convnextv2_nano": "convnextv2_nano()",
        "convnextv2_tiny": "convnextv2_tiny()",
    }),
    "inception_next": ("sail-sg/inceptionnext", ["models/inceptionnext.py"], {
        "inception_next_atto": "inceptionnext_atto()", "inception_next_tiny": "inceptionnext_tiny()",
    }),
    "poolformer": ("sail-sg/poolformer", ["models/poolformer.py"], {
        "poolformer_s12": "poolformer_s12()", "poolformer_m36": "poolformer_m36()",
    }),
    "metaformer": ("sail-sg/metaformer", ["metaformer_baselines.py"], {
        f"{fam}_{size}": f"{fam}_{size}()"
        for fam in ("identityformer", "randformer", "poolformerv2") for size in ("s12", "m36")
    } | {
        f"{fam}_{size}": f"{fam}_{size}()" for fam in ("convformer", "caformer") for size in ("s18", "m36")
    }),
    "hornet": ("raoyongming/HorNet", ["hornet.py"], {
        "hornet_tiny_7x7": "hornet_tiny_7x7()", "hornet_tiny_gf": "hornet_tiny_gf()",
        "hornet_small_gf": "hornet_small_gf()", "hornet_large_gf_384": "hornet_large_gf_img384()",
    }),
    # Plain BatchNorm (use_sync_bn=False; the same in eval) so that the official deep_fuse_BN() applies.
    "replknet": ("DingXiaoH/RepLKNet-pytorch", ["replknet.py"], {
        "replknet_31b": "RepLKNet(large_kernel_sizes=[31, 29, 27, 13], layers=[2, 2, 18, 2], "
                        "channels=[128, 256, 512, 1024], drop_path_rate=0, small_kernel=5, use_sync_bn=False)",
        "replknet_31l": "RepLKNet(large_kernel_sizes=[31, 29, 27, 13], layers=[2, 2, 18, 2], "
                        "channels=[192, 384, 768, 1536], drop_path_rate=0, small_kernel=5, use_sync_bn=False)",
        "replknet_xl": "RepLKNet(large_kernel_sizes=[27, 27, 27, 13], layers=[2, 2, 18, 2], "
                       "channels=[256, 512, 1024, 2048], drop_path_rate=0, small_kernel=None, dw_ratio=1.5, "
                       "use_sync_bn=False)",
    }),
    "glnet": ("rayleizhu/GLMix", ["models/glnet.py"], {
        v: f"{v}()" for v in ("glnet_4g", "glnet_9g", "glnet_16g", "glnet_stl", "glnet_stl_paramslot")
    }),
    # the token-labelling models subclass models/glnet.py's GLNet with an auxiliary head over the tokens
    "glnet_tklb": ("rayleizhu/GLMix", ["models/glnet_tklb.py", "models/glnet.py"], {
        v: f"{v}()" for v in ("glnet_4g_tklb", "glnet_9g_tklb")
    }),
    "unireplknet": ("AILab-CVC/UniRepLKNet", ["unireplknet.py"], {
        f"unireplknet_{v}": f"unireplknet_{v}(attempt_use_lk_impl=False)" for v in ("a", "f", "t")
    }),
    # get_cls_model's build from experiments/imagenet/cvt/*.yaml (needs einops)
    "cvt": ("microsoft/CvT", ["lib/models/cls_cvt.py"], {
        name: ("ConvolutionalVisionTransformer(act_layer=QuickGELU, norm_layer=partial(LayerNorm, eps=1e-5), "
               f"spec=dict(NUM_STAGES=3, PATCH_SIZE=[7, 3, 3], PATCH_STRIDE=[4, 2, 2], PATCH_PADDING=[2, 1, 1], "
               f"DIM_EMBED={dims}, NUM_HEADS={heads}, DEPTH={depth}, MLP_RATIO=[4.0] * 3, ATTN_DROP_RATE=[0.0] * 3, "
               "DROP_RATE=[0.0] * 3, DROP_PATH_RATE=[0.0] * 3, QKV_BIAS=[True] * 3, CLS_TOKEN=[False, False, True], "
               "QKV_PROJ_METHOD=['dw_bn'] * 3, KERNEL_QKV=[3] * 3, PADDING_KV=[1] * 3, STRIDE_KV=[2] * 3, "
               "PADDING_Q=[1] * 3, STRIDE_Q=[1] * 3))")
        for name, dims, heads, depth in [("cvt_13_224", [64, 192, 384], [1, 3, 6], [1, 2, 10]),
                                         ("cvt_21_224", [64, 192, 384], [1, 3, 6], [1, 4, 16])]
    }),
    # the package's classification.py imports its __init__.py (the DWT and blocks, which need PyWavelets and einops)
    "wavemix": ("pranavphoenix/WaveMix", ["wavemix/classification.py", "wavemix/__init__.py"], {
        name: (f"WaveMix(num_classes=1000, depth=16, mult=2, ff_channel={c}, final_dim={c}, dropout=0.5, "
               f"level={lvl}, " + ("initial_conv='strided', stride=2)" if lvl == 4 else
                                   "initial_conv='pachify', patch_size=4)"))
        for name, c, lvl in [("wavemix_192_16_l3", 192, 3), ("wavemix_192_16_l1", 192, 1),
                             ("wavemix_256_16_l3", 256, 3), ("wavemix_256_16_l4", 256, 4)]
    }),
    # The official SKA is a Triton kernel: `_reference_ska` below stands in for it (see OFFICIAL_PATCHES).
    "lsnet": ("jameslahm/lsnet", ["model/lsnet.py"], {
        f"lsnet_{v}": f"LSNet(img_size=224, patch_size=8, embed_dim={e}, depth={d}, num_heads=[3, 3, 3, 4])"
        for v, e, d in (("t", [64, 128, 256, 384], [0, 2, 8, 10]), ("s", [96, 192, 320, 448], [1, 2, 8, 10]),
                        ("b", [128, 256, 384, 512], [4, 6, 8, 10]))
    } | {  # the distilled checkpoints' layout (the official lsnet_{t,s,b}_distill): a second BN-Linear head
        f"lsnet_{v}_distill": f"LSNet(img_size=224, patch_size=8, embed_dim={e}, depth={d}, num_heads=[3, 3, 3, 4], "
                              "distillation=True)"
        for v, e, d in (("t", [64, 128, 256, 384], [0, 2, 8, 10]), ("s", [96, 192, 320, 448], [1, 2, 8, 10]),
                        ("b", [128, 256, 384, 512], [4, 6, 8, 10]))
    }),
    # The legacy BRA (ops/bra_legacy.py) is the layout of the released checkpoints; einops is needed.
    "biformer": ("rayleizhu/BiFormer", ["models/biformer.py", "ops/bra_legacy.py", "models/_common.py"], {
        f"biformer_{v}": f"biformer_{v}()" for v in ("tiny", "small", "base")
    }),
    "biformer_stl": ("rayleizhu/BiFormer", ["models/biformer_stl.py", "ops/bra_legacy.py", "models/_common.py"], {
        "biformer_stl": "biformer_stl()",
    }),
    "rmt": ("qhfan/RMT", ["classfication_release/RMT.py"], {
        "rmt_tiny": "RMT_T3(None)", "rmt_small": "RMT_S(None)", "rmt_base": "RMT_M2(None)",
        "rmt_large": "RMT_L6(None)",
    }),
    # the CUDA-free attention_native.py (the swattention extension is never looked for)
    "transnext": ("DaiShiResearch/TransNeXt", ["classification/transnext.py", "classification/attention_native.py"], {
        "transnext_micro": "transnext_micro()", "transnext_tiny": "transnext_tiny()",
        "transnext_small": "transnext_small()", "transnext_base": "transnext_base()",
        "transnext_small_384": "transnext_small(img_size=384, pretrain_size=224)",
        "transnext_micro_aaaa_256": "transnext_micro_AAAA(img_size=256)",
    }),
    # official names carry the large branch's 224 / 384; timm's (ours) the small branch's 240 / 408
    "crossvit": ("IBM/CrossViT", ["models/crossvit.py"], {
        "crossvit_tiny_240": "crossvit_tiny_224()", "crossvit_9_dagger_240": "crossvit_9_dagger_224()",
        "crossvit_15_dagger_408": "crossvit_15_dagger_384()",
    }),
}

# family -> official re-parameterisation steps, each applied on top of the previous ones and checked
OFFICIAL_DEPLOY: dict[str, list[str]] = {
    "replknet": ["structural_reparam", "deep_fuse_BN"],
    "unireplknet": ["reparameterize_unireplknet"],
}
# inputs for the larger models, whose 31x31 depthwise convs are slow on a CPU in NCHW; LSNet's official attention
# biases fit a 4x4 stage-4 map only (inputs of 193-256 pixels a side); the official BiFormers (auto_pad=False) take
# sides that are multiples of 112 only
SIZES = {"replknet_xl": [(128, 128), (96, 160)], "replknet_31l": [(128, 128), (96, 160)],
         "transnext_small_384": [(384, 384)], "transnext_micro_aaaa_256": [(256, 256)],
         # the official CrossViT resizes any input to the branch sizes it was built for: compared at those
         **{n: [(240, 240)] for n in ("crossvit_tiny_240", "crossvit_9_dagger_240")},
         "crossvit_15_dagger_408": [(408, 408)],
         "wavemix_256_16_l4": [(256, 256), (192, 320)]} | {
    f"lsnet_{v}{d}": [(224, 224), (256, 208)] for v in "tsb" for d in ("", "_distill")} | {
    f"biformer_{v}": [(224, 224), (224, 336)] for v in ("tiny", "small", "base", "stl")}


def _reference_ska(x, w):
    """The official Triton SKA kernel's arithmetic written as a direct loop over the k x k taps: output channel c
    takes weight channel c % Cw at every pixel, zero padding (k - 1) / 2."""
    import torch
    import torch.nn.functional as F

    n, c, h, width = x.shape
    wc, kk = w.shape[1:3]
    k = round(kk ** 0.5)
    p = (k - 1) // 2
    xp = F.pad(x, (p, p, p, p))
    wsel = w[:, torch.arange(c) % wc]  # (n, c, k*k, h, w)
    out = torch.zeros_like(x)
    for u in range(k):
        for v in range(k):
            out = out + xp[:, :, u:u + h, v:v + width] * wsel[:, :, u * k + v]
    return out


def _patch_lsnet(module) -> None:
    import torch

    class ReferenceSKA(torch.nn.Module):
        def forward(self, x, w):
            return _reference_ska(x, w)

    module.SKA = ReferenceSKA


def _condition_lsnet(model) -> None:
    """LSNet has no layer scale: with randomize_'s BatchNorm weights (|w| ~ 1) at the end of every residual branch,
    activations grow ~1e5-fold over the blocks and saturate the SE gates, so that float32 itself drifts 1e-4 from
    float64. Those last BatchNorm weights are scaled by 0.1 (float32 then agrees with float64 to ~3e-7)."""
    import torch

    with torch.no_grad():
        for m in model.modules():
            kind = type(m).__name__
            if kind == "FFN":
                m.pw2.bn.weight.mul_(0.1)
            elif kind == "Attention":
                m.proj[1].bn.weight.mul_(0.1)
            elif kind == "RepVGGDW":
                m.conv.bn.weight.mul_(0.1)
                m.conv1.bn.weight.mul_(0.1)
            elif kind == "LSConv":
                m.bn.weight.mul_(0.1)


# family -> called on the loaded official module (stand-ins for kernels that need a GPU toolchain)
OFFICIAL_PATCHES = {"lsnet": _patch_lsnet}
# family -> called on the randomised official model before its weights are copied (numerical conditioning)
OFFICIAL_CONDITION = {"lsnet": _condition_lsnet}


def _git(path: Path, *args: str) -> str | None:
    """`git -C path ARGS`'s output, or None where git fails (not a repository, no such object)."""
    r = subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True)
    return r.stdout if r.returncode == 0 else None


@dataclass
class OfficialSource:
    """One official repository's code: a checked-out tree (files read from disk) or a git directory, bare or not
    (files read from HEAD)."""

    path: Path
    checkout: bool

    def read(self, rel: str) -> str:
        if self.checkout:
            return (self.path / rel).read_text()
        return subprocess.run(["git", "-C", str(self.path), "show", f"HEAD:{rel}"], check=True, capture_output=True,
                              text=True).stdout

    def commit(self, files: list[str]) -> str:
        """HEAD's short hash; '-dirty' where a checkout's copy of `files` differs from it; 'unversioned' for a
        tree outside git."""
        if self.checkout:
            top = _git(self.path, "rev-parse", "--show-toplevel")
            if top is None or Path(top.strip()).resolve() != self.path.resolve():
                return "unversioned"
        commit = (_git(self.path, "rev-parse", "--short", "HEAD") or "unversioned").strip()
        if self.checkout and (_git(self.path, "status", "--porcelain", "--", *files) or "").strip():
            commit += "-dirty"
        return commit


def find_source(path: Path, files: list[str]) -> OfficialSource | None:
    """The official code at `path`, if the files are there: a source tree first, else a git directory."""
    if all((path / rel).is_file() for rel in files):
        return OfficialSource(path, checkout=True)
    if path.is_dir() and all(_git(path, "cat-file", "-e", f"HEAD:{rel}") is not None for rel in files):
        return OfficialSource(path, checkout=False)
    return None


def candidates(repo: str, explicit: Path | None, roots: list[Path]) -> list[Path]:
    """Where to look for `repo` (owner/name): the explicit path alone, else the clone and mirror layouts of each
    root."""
    if explicit is not None:
        return [explicit]
    owner, name = repo.split("/")
    return [p for root in roots for p in (root / name, root / f"{owner}+{name}" / "repo", root / f"{owner}+{name}")]


def resolve_sources(families: list[str], explicit: dict[str, Path], roots: list[Path]) -> dict[str, OfficialSource]:
    """Each family's official code; for those not found, one line each on stderr and exit status 2."""
    found, missing = {}, []
    for family in families:
        repo, files, _ = OFFICIAL[family]
        tried = candidates(repo, explicit.get(family), roots)
        source = next((s for s in (find_source(p, files) for p in tried) if s), None)
        if source is None:
            where = (f"{tried[0]} lacks {', '.join(files)}" if family in explicit else
                     f"not under {', '.join(map(str, roots))}" if roots else "no --official-root")
            missing.append(f"official_parity: no official code for {family} ({where}): git clone "
                           f"https://github.com/{repo} and pass --official {family}=PATH or --official-root DIR")
        else:
            found[family] = source
    if missing:
        print("\n".join(missing), file=sys.stderr)
        sys.exit(2)
    return found


def _load_official_module(source: OfficialSource, files: list[str], tmp: Path) -> types.ModuleType:
    """Materialise the official files in `tmp` and import the first one.

    Only import lines are adapted (a relative import, timm helpers that moved, fairscale's checkpoint wrapper, a
    sparse-conv dependency the classification models do not use, RMT's unused fvcore / einops imports, TransNeXt's
    look-up of its optional CUDA extension, so that its pure-PyTorch attention_native.py is loaded); the model code
    runs unchanged.
    """
    for rel in files:
        src = source.read(rel)
        src = src.replace("from .utils import", "from utils import")
        src = src.replace("from timm.models.layers.helpers import to_2tuple", "from timm.layers import to_2tuple")
        src = src.replace("from MinkowskiEngine import SparseTensor", "SparseTensor = None")
        src = src.replace("from fairscale.nn.checkpoint import checkpoint_wrapper", "checkpoint_wrapper = None")
        src = src.replace("from timm.models.layers import", "from timm.layers import")
        src = src.replace("from timm.models.registry import register_model", "")
        src = src.replace("from .registry import register_model", "")  # CvT's own registry
        src = src.replace("from torch._six import container_abcs", "import collections.abc as container_abcs")
        src = src.replace("from .ska import SKA", "SKA = None  # a Triton kernel; OFFICIAL_PATCHES supplies SKA")
        src = src.replace("from ops.bra_legacy import", "from bra_legacy import")
        src = src.replace("from ._common import", "from _common import")
        src = src.replace("from .glnet import", "from glnet import")  # GLMix's glnet_tklb.py
        src = src.replace("from fvcore.nn import FlopCountAnalysis, flop_count_table", "")  # RMT: unused
        src = src.replace("from einops import einsum", "")  # RMT: unused
        src = src.replace("import pkg_resources", "")  # TransNeXt: only to look for its CUDA extension,
        src = src.replace("if is_installed('swattention'):", "if False:")  # whose native twin is the reference
        # CrossViT calls timm 0.3's Block(..., qk_scale=None, drop=p): the same block under timm 1.0's argument names
        src = src.replace("from timm.models.vision_transformer import _cfg, Mlp, Block",
                          "from timm.models.vision_transformer import _cfg, Mlp, Block as _Block\n"
                          "def Block(qk_scale=None, drop=0., **kw):\n"
                          "    assert qk_scale is None\n"
                          "    return _Block(proj_drop=drop, **kw)")
        src = re.sub(r"^@register_model\s*$", "", src, flags=re.M)
        src = src.replace("from wavemix import", "from wavemix_init import")  # WaveMix's package __init__
        src = src.replace("from numpy.lib.function_base import hamming", "")  # unused; gone in numpy 2
        (tmp / (Path(rel).name if Path(rel).name != "__init__.py" else "wavemix_init.py")).write_text(src)
    sys.path.insert(0, str(tmp))
    name = Path(files[0]).stem
    spec = importlib.util.spec_from_file_location(f"official_{name}", tmp / Path(files[0]).name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _randomize_checkpointed(model, randomize_):
    """`randomize_` (seed 3) on what the state dict holds; non-persistent buffers (index tables, sequence-length
    scales that the official code derives from the input size) keep their values, as no checkpoint carries
    them. Returns the model in eval mode."""
    kept = {}
    for mod_name, mod in model.named_modules():
        for b in getattr(mod, "_non_persistent_buffers_set", ()):
            if getattr(mod, b, None) is not None:
                kept[(mod_name, b)] = getattr(mod, b).clone()
    randomize_(model, seed=3)
    for (mod_name, b), t in kept.items():
        setattr(model.get_submodule(mod_name), b, t)
    return model.eval()


def _check_deploy(name, ours, official, steps, xs, repo, ctor, write_keys, commit, github) -> list[tuple]:
    """Ours re-parameterised vs the official model after each of its re-parameterisation steps, and the
    official deploy-form state dict loaded into `create_model(name, deploy=True, pretrained=...)`."""
    import torch

    import convscope
    from convscope.models import save_weights
    from tests.conftest import rel_err

    rows = []
    ours_deploy = convscope.reparameterize_model(ours)
    applied = ""
    for step in steps:
        getattr(official, step)()
        applied += f".{step}()"
        sd = official.state_dict()
        if write_keys:
            out = Path(f"{write_keys.rstrip('/')}_deploy")
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{name}.{step}.json").write_text(json.dumps(dict(
                repo=github, commit=commit, constructor=ctor + applied,
                keys={k: list(v.shape) for k, v in sd.items()}), indent=0))
        with tempfile.TemporaryDirectory() as tmp:
            path = save_weights(sd, Path(tmp) / "deploy.safetensors")
            loaded = convscope.create_model(name, deploy=True, pretrained=str(path)).eval()
        for x in xs:
            with torch.no_grad():
                want = official(x)
                err_ours, err_loaded = rel_err(ours_deploy(x), want), rel_err(loaded(x), want)
            size = f"{x.shape[2]}x{x.shape[3]}"
            rows.append((f"{name} reparameterize_model", repo, ctor + applied, size, err_ours))
            rows.append((f"{name} deploy=True, official deploy weights", repo, ctor + applied, size, err_loaded))
            print(f"{name:26s} {size} after {step}: reparameterize_model {err_ours:.2e}, "
                  f"create_model(deploy=True) with the official deploy weights {err_loaded:.2e}")
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="families and their official repositories:\n" + "\n".join(
            f"  {f:15s} https://github.com/{repo}  ({', '.join(files)})" for f, (repo, files, _) in OFFICIAL.items()))
    p.add_argument("--official-root", action="append", default=[], type=Path, metavar="DIR",
                   help="a directory holding the official repositories: DIR/<name> (git clone) or "
                        "DIR/<owner>+<name>[/repo] (git mirror); repeatable")
    p.add_argument("--official", action="append", default=[], metavar="FAMILY=PATH",
                   help="one family's official repository: a source tree or a git directory (bare included); "
                        "repeatable, takes precedence over --official-root")
    p.add_argument("--families", default=None,
                   help="comma-separated (default: all, or those of --models)")
    p.add_argument("--write-keys", default=None, metavar="DIR",
                   help="record each official state dict's keys and shapes as JSON here (and in DIR_deploy/)")
    p.add_argument("--models", default=None, metavar="NAMES",
                   help="comma-separated variants of ours to compare (default: every pair of the families)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--out", default=None, help="write the markdown results page here")
    out.add_argument("--merge", default=None, metavar="FILE.md",
                     help="replace the rows of the variants run in this existing results page (and note the run "
                          "in its header)")
    return p


def _row_model(line: str) -> str | None:
    """The variant a results-table row is about (its first cell's first word), None for other lines."""
    if not line.startswith("| ") or line.startswith(("| ours ", "|---")):
        return None
    return line[2:].split(" ", 1)[0]


def _row_repo(line: str) -> str:
    """A row's official repository (owner/name, without the commit)."""
    return line.split(" | ")[1].split("@")[0]


def merge_rows(page: str, new_rows: list[str], models: list[str], note: str) -> str:
    """`page` with its rows for `models` replaced by `new_rows` (see --merge) and `note` added to its header."""
    lines = page.rstrip("\n").split("\n")
    if not any(line.startswith("| ours ") for line in lines):
        raise ValueError("not an official_parity results page (no '| ours |' table header)")
    by_model: dict[str, list[str]] = {}
    for row in new_rows:
        by_model.setdefault(_row_model(row), []).append(row)
    out: list[str] = []
    placed = set()
    for line in lines:
        m = _row_model(line)
        if m in by_model:
            if m not in placed:
                out += by_model[m]
                placed.add(m)
            continue
        out.append(line)
    for m in models:
        if m in placed:
            continue
        repo = _row_repo(by_model[m][0])
        same = [i for i, line in enumerate(out) if _row_model(line) and _row_repo(line) == repo]
        at = same[-1] + 1 if same else len(out)
        out[at:at] = by_model[m]
        placed.add(m)
    table = next(i for i, line in enumerate(out) if line.startswith("| ours "))
    blank = max(i for i in range(table) if out[i] == "") if "" in out[:table] else table  # the header's end
    out.insert(blank, note)
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    families = [f for f in (args.families or ",".join(OFFICIAL)).split(",") if f]
    only = None
    if args.models is not None:
        only = [m for m in args.models.split(",") if m]
        where = {m: f for f, (_, _, pairs) in OFFICIAL.items() for m in pairs}
        unknown_models = [m for m in only if m not in where]
        if unknown_models:
            p.error(f"no official pair for {', '.join(unknown_models)}; known: {', '.join(where)}")
        if args.families is None:
            families = list(dict.fromkeys(where[m] for m in only))
        elif any(where[m] not in families for m in only):
            p.error(f"--models {args.models} is not within --families {args.families}")
    if args.merge and not Path(args.merge).is_file():
        p.error(f"--merge takes an existing results page; {args.merge} is not a file")
    explicit = {}
    for item in args.official:
        family, sep, path = item.partition("=")
        if not sep or not path:
            p.error(f"--official takes FAMILY=PATH; got {item!r}")
        explicit[family] = Path(path)
    unknown = sorted({f for f in families + list(explicit) if f not in OFFICIAL})
    if unknown:
        p.error(f"unknown famil{'ies' if len(unknown) > 1 else 'y'} {', '.join(unknown)}; "
                f"known: {', '.join(OFFICIAL)}")
    sources = resolve_sources(families, explicit, args.official_root)

    import torch

    from tests.conftest import import_timm, randomize_, rel_err
    import_timm()  # the official files import timm helpers
    import convscope
    from convscope.models import load_checkpoint

    rows = []
    for family in families:
        github, files, pairs = OFFICIAL[family]
        commit = sources[family].commit(files)
        with tempfile.TemporaryDirectory() as tmp:
            module = _load_official_module(sources[family], files, Path(tmp))
            if family in OFFICIAL_PATCHES:
                OFFICIAL_PATCHES[family](module)
            for ours_name, ctor in pairs.items():
                if only is not None and ours_name not in only:
                    continue
                torch.manual_seed(0)
                with contextlib.redirect_stdout(io.StringIO()):  # HorNet's gnconv prints its configuration
                    official = _randomize_checkpointed(eval(ctor, vars(module)), randomize_)
                if family in OFFICIAL_CONDITION:
                    OFFICIAL_CONDITION[family](official)
                sd = official.state_dict()
                if args.write_keys:
                    out = Path(args.write_keys)
                    out.mkdir(parents=True, exist_ok=True)
                    keys = {k: list(v.shape) for k, v in sd.items()}
                    (out / f"{ours_name}.json").write_text(json.dumps(
                        dict(repo=github, commit=commit, constructor=ctor, keys=keys), indent=0))
                ours = load_checkpoint(convscope.create_model(ours_name).eval(), sd, source="official")
                sizes = [(224, 224)] if ours.traits.fixed_input_size else [(224, 224), (160, 288)]
                sizes = SIZES.get(ours_name, sizes)
                xs = [torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(0)) for h, w in sizes]
                repo = f"{github}@{commit}"
                for x in xs:
                    with torch.no_grad():
                        err = rel_err(ours(x), official(x))
                    rows.append((ours_name, repo, ctor, f"{x.shape[2]}x{x.shape[3]}", err))
                    print(f"{ours_name:26s} {x.shape[2]}x{x.shape[3]:<4d} max rel err {err:.2e}")
                if family in OFFICIAL_DEPLOY:
                    rows += _check_deploy(ours_name, ours, official, OFFICIAL_DEPLOY[family], xs, repo, ctor,
                                          args.write_keys, commit, github)
                del official, ours
            sys.path.remove(tmp)

    worst = max(r[-1] for r in rows)
    print(f"worst {worst:.2e} over {len(rows)} comparisons")
    table = [f"| {a} | {b} | `{c}` | {d} | {e:.1e} |" for a, b, c, d, e in rows]
    machine = (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
               f"torch {torch.__version__}, fp32")
    if args.merge:
        import datetime
        ran = list(dict.fromkeys(r[0].split(" ", 1)[0] for r in rows))
        note = (f"Merged {datetime.date.today().isoformat()}: "
                "`python benchmarks/official_parity.py --official-root DIR "
                f"--models {','.join(ran)} --merge {args.merge}` ({machine}) re-measured the rows of "
                f"{', '.join(ran)}.")
        page = Path(args.merge)
        page.write_text(merge_rows(page.read_text(), table, ran, note))
    if args.out:
        family_arg = "" if families == list(OFFICIAL) else f" --families {','.join(families)}"
        family_arg += f" --models {','.join(only)}" if only is not None else ""
        lines = [
            "# convscope vs the official model code",
            "",
            f"Command: `python benchmarks/official_parity.py --official-root DIR{family_arg} --out {args.out}`, DIR "
            "holding clones of the official repositories at the commits below.",
            f"Machine: {machine}.",
            "Random weights (tests.conftest.randomize_) in the official model, loaded into ours with "
            "`load_checkpoint(source=\"official\")`; batch 2; error = max|ours - official| / max|official|.",
            "Rows '<model> reparameterize_model': our re-parameterised model against the official one after the "
            "re-parameterisation calls shown; '<model> deploy=True, official deploy weights': the official "
            "deploy-form state dict loaded by `create_model(name, deploy=True, pretrained=...)`.",
            "LSNet: the official SKA is a Triton kernel, replaced here by `_reference_ska` (a direct loop over the "
            "3x3 taps); both models get the randomised weights with each residual branch's last BatchNorm weight "
            "scaled by 0.1 (`_condition_lsnet`: without it float32 alone drifts 1e-4 from float64).",
            "",
            "| ours | official repository | official constructor | input | max rel err |",
            "|---|---|---|---|---|",
        ] + table
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0 if worst < 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
