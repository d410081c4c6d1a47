"""`convscope weights list | download | import | verify`: the registry of trained-weight releases
(convscope.models.pretrained) from the command line, in the caches `create_model(pretrained=...)` reads; and
`convscope export-hub`: a trained run as a Hugging Face Hub model folder, optionally pushed."""
from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from ..models import resolve_name
from ..models.pretrained import (
    RELEASES,
    WITHOUT_WEIGHTS,
    Release,
    cached_path,
    fetch,
    find_release,
    import_file,
    release_by_tag,
    releases,
    verify_file,
)
from ..utils import text_table
from . import values

LIST_HEADERS = ("tag", "model", "source", "data", "res", "top-1", "licence", "keys", "cached")


def release_of(spec: str) -> Release:
    """The release a user names: a full tag (`convnext_atto.d2_in1k`), a variant (its default release) or
    `variant.pretrain`. ValueError in one line naming what was expected."""
    if any(r.tag == spec for r in RELEASES):
        return release_by_tag(spec)
    name, _, tag = spec.partition(".")
    try:
        name = resolve_name(name)
    except ValueError:
        release_by_tag(spec)    # raises, suggesting close tags
    return find_release(name, tag or None)


def _is_cached(release: Release) -> bool:
    try:
        cached_path(release)
    except (ValueError, OSError):
        return False
    return True


def _cmd_list(args: argparse.Namespace) -> int:
    if args.model is not None:
        name = resolve_name(args.model)
        chosen = releases(name)
        if not chosen:
            raise ValueError(f"{name} has no pretrained weights: "
                             f"{WITHOUT_WEIGHTS.get(name, 'no release is registered for it')}")
    else:
        chosen = list(RELEASES)
    rows = [dict(tag=r.tag, model=r.model, source=r.source, data=r.dataset, res=r.resolution, top1=r.top1,
                 licence=r.licence, keys=r.keys, cached=_is_cached(r)) for r in chosen]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    table = [[r["tag"], r["model"], r["source"], r["data"], str(r["res"]), "-" if r["top1"] is None else
              f"{r['top1']:.1f}", r["licence"], r["keys"], "yes" if r["cached"] else "-"] for r in rows]
    print(text_table(LIST_HEADERS, table, "lllllrlll"))
    print(f"\n{len(rows)} releases; a variant's first is its default (pretrained=True).")
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    release = release_of(args.spec)
    print(fetch(release))
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    release = release_of(args.model)
    path = import_file(args.file, release.tag)
    print(f"{args.file} verified for {release.tag} and cached as {path}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    spec = args.spec
    if Path(spec).expanduser().is_file():
        if args.model is None:
            raise ValueError(f"verify {spec}: name the release it should be with --model NAME[.TAG]")
        release, path = release_of(args.model), Path(spec).expanduser()
    else:
        if args.model is not None:
            raise ValueError(f"--model is for a FILE; {spec!r} names a release (or is no file)")
        release = release_of(spec)
        path = cached_path(release)
    for line in verify_file(path, release):
        print(f"{release.tag}: {line}")
    print(f"{release.tag}: {path} verified")
    return 0


def _cmd_export_hub(args: argparse.Namespace) -> int:
    from ..extras import available
    from ..train.hub_export import HUB_FILES, check_repo_id, export_hub, push_to_hub

    if args.push is not None:      # checked before the export
        check_repo_id(args.push)
        if not available("huggingface_hub"):
            raise ValueError("--push needs huggingface_hub, which is not installed: pip install 'convscope[hub]'")
    out = export_hub(args.run, args.out, args.push)
    print(f"wrote {', '.join(HUB_FILES)} to {out}")
    if args.push is not None:
        print(f"pushed {out} to hf-hub:{args.push}: {push_to_hub(out, args.push, private=args.private)}")
    return 0


def add_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """weights (list, download, import, verify), export-hub."""
    sp = add("weights", None, "trained-weight releases: list, download, import a file downloaded by hand, verify")
    sub = sp.add_subparsers(dest="weights_command", required=True, metavar="ACTION", parser_class=type(sp))

    def action(name: str, fn: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=fn)
        return p

    p = action("list", _cmd_list, "the releases (all, or one model's), and whether each is cached")
    p.add_argument("--model", default=None, metavar="NAME", help="only this variant's releases")
    p.add_argument("--json", action="store_true")
    p = action("download", _cmd_download, "download a release into its cache (the Hub's or torch.hub's)")
    p.add_argument("spec", metavar="NAME[.TAG]", help="a variant (its default release) or a release tag")
    p = action("import", _cmd_import, "verify a file downloaded by hand (SHA-256, keys and shapes, finite "
               "values) and cache it for pretrained=TAG")
    p.add_argument("file", type=values.input_file, metavar="FILE")
    p.add_argument("--model", required=True, metavar="NAME[.TAG]", help="the release the file is")
    p = action("verify", _cmd_verify, "check a cached release, or a file, against the registry: SHA-256, keys and "
               "shapes through the family's converter, finite values")
    p.add_argument("spec", metavar="NAME[.TAG]|FILE")
    p.add_argument("--model", default=None, metavar="NAME[.TAG]", help="the release a FILE should be")

    sp = add("export-hub", _cmd_export_hub, "write a trained run as a Hugging Face Hub model folder (config.json, "
             "model.safetensors, README.md model card), optionally pushing it")
    sp.add_argument("run", metavar="RUN", help="the run directory (convscope train --out)")
    sp.add_argument("--out", type=values.output_dir, required=True, help="the folder to write")
    sp.add_argument("--push", default=None, metavar="ORG/NAME", help="upload the folder to this Hub repository "
                    "(huggingface_hub's upload_folder; needs a token)")
    sp.add_argument("--private", action="store_true", help="with --push: create the repository private")
