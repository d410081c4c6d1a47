"""Pretrained weights into a model: resolve a spec to a local file, read it (safetensors or weights-only torch; nothing
is unpickled beyond tensors), map its keys to convscope's with the family's converter, adapt the classifier and the
input convolutions, load.

`pretrained` may be True (the variant's default release), a tag (`convnext_tiny.fb_in1k`, or only `fb_in1k`),
`hf-hub:org/repo` (its `model.safetensors`, else its `pytorch_model.bin`, as timm's repositories hold them) or
`hf-hub:org/repo/path/in/repo`, an http(s) URL, a local path, or a local Hub model folder (its `model.safetensors`).
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..registry import create_model, official_converter, resolve_name
from ..source import check_finite
from ..weights import read_state_dict, save_weights
from . import remote
from .adapt import adapt_input_conv, classifier_names, transfer_layers
from .registry import (
    HUB,
    MANUAL,
    OFFICIAL,
    PYTORCH_BIN,
    RELEASES,
    SAFETENSORS,
    TIMM,
    TRANSFORMERS,
    URL,
    Release,
    find_release,
    release_by_tag,
)
from .remote import checkpoint_dir, download_url, hub_download, sha256_of, url_file_name

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadReport:
    """What `load_pretrained` did: the file, the release (None for a path / URL / Hub repository outside the
    registry), the key convention it was read with, the classifier and input-convolution tensors it changed, and
    the one-line notes it logged about them."""

    path: Path
    release: Release | None
    keys: str
    head_reset: tuple[str, ...] = ()
    #: 'key (a -> b channels)' per adapted input-convolution weight
    stem_adapted: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def _import_hint(release: Release) -> str:
    return (f"download it by hand from {release.location} and run `convscope weights import FILE --model "
            f"{release.tag}` or convscope.models.pretrained.import_file(path, {release.tag!r})")


def imported_path(release: Release) -> Path:
    """Where `import_file` caches a release (torch.hub's checkpoint directory, `<tag>.safetensors`)."""
    return checkpoint_dir() / f"{release.tag}.safetensors"


def _url_dest(url: str, release: Release | None) -> Path:
    """Where a URL's file is cached in torch.hub's checkpoint directory: the release's file name, else the URL's,
    else `<tag>.pth`, else a name made from the URL's SHA-256."""
    name = (release.filename if release else None) or url_file_name(url)
    if name is None:
        name = f"{release.tag}.pth" if release else f"url-{hashlib.sha256(url.encode()).hexdigest()[:16]}.pth"
    return checkpoint_dir() / name


def fetch(release: Release) -> Path:
    """The local file of a release: from the Hub cache or torch.hub's, downloading it when online; a manual
    release must have been imported (`import_file`). ValueError in one line saying what is missing and how to get it."""
    imported = imported_path(release)
    if imported.is_file():
        return imported
    if release.source == MANUAL:
        raise ValueError(f"{release.tag} cannot be downloaded by a program; {_import_hint(release)}")
    if release.source == HUB:
        fallback = PYTORCH_BIN if release.filename == SAFETENSORS else None
        return hub_download(release.location, release.filename, hint=_import_hint(release), fallback=fallback)
    return download_url(release.location, _url_dest(release.location, release), release.sha256,
                        hint=_import_hint(release))


def download(tag: str) -> Path:
    """Fetch the release with the full tag `tag` (`arch.pretrain`) into its cache and return the file's path."""
    return fetch(release_by_tag(tag))


def _registered(name: str, **fields: str | None) -> Release | None:
    """The registry's release of `name` with these field values (source, location, ...), if there is one: to know
    the key convention and hash of a file given by its Hub repository or URL."""
    return next((r for r in RELEASES if r.model == name and all(getattr(r, k) == v for k, v in fields.items())), None)


def _split_hub(spec: str) -> tuple[str, str | None]:
    """('org/repo', path in the repository or None) of 'hf-hub:org/repo[/path]'."""
    parts = spec[len("hf-hub:"):].split("/", 2)
    if len(parts) < 2 or not all(parts[:2]):
        raise ValueError(f"expected 'hf-hub:org/repo' or 'hf-hub:org/repo/file'; got {spec!r}")
    return f"{parts[0]}/{parts[1]}", (parts[2] if len(parts) == 3 and parts[2] else None)


def _is_path(spec: str) -> bool:
    return os.sep in spec or "/" in spec or Path(spec).suffix in (".pth", ".pt", ".bin", ".safetensors", ".ckpt")


def resolve(name: str, pretrained: bool | str | os.PathLike) -> tuple[Path, Release | None]:
    """The local weights file for `pretrained` (see the module docstring) and its release when it is a registered
    one. Downloads what is not cached (unless offline); ValueError / TypeError in one line for a bad spec."""
    name = resolve_name(name)
    if pretrained is True:
        release = find_release(name)
        return fetch(release), release
    if isinstance(pretrained, os.PathLike):
        pretrained = os.fspath(pretrained)
    if not isinstance(pretrained, str) or not pretrained:
        raise TypeError("pretrained must be True, a tag, 'hf-hub:org/repo', a URL or a file path; "
                        f"got {pretrained!r}")
    if pretrained.startswith("hf-hub:"):
        repo_id, filename = _split_hub(pretrained)
        release = _registered(name, source=HUB, location=repo_id, filename=filename or SAFETENSORS)
        if filename is None:       # timm's layout: model.safetensors, else pytorch_model.bin
            return hub_download(repo_id, SAFETENSORS, fallback=PYTORCH_BIN), release
        return hub_download(repo_id, filename), release
    if pretrained.startswith(("http://", "https://")):
        release = _registered(name, source=URL, location=pretrained)
        return download_url(pretrained, _url_dest(pretrained, release), release.sha256 if release else None), release
    if _is_path(pretrained) or Path(pretrained).exists():
        path = Path(pretrained).expanduser()
        if path.is_dir() and (path / SAFETENSORS).is_file():    # a Hub model folder (convscope export-hub, timm)
            return path / SAFETENSORS, None
        if not path.is_file():
            raise ValueError(f"no weights file at {path}")
        return path, None
    release = find_release(name, pretrained)
    return fetch(release), release


def _to_our_keys(target: nn.Module, sd: dict[str, torch.Tensor], keys: str) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict in convscope's keys and the convention it was read with: TIMM as it is; OFFICIAL /
    TRANSFORMERS through the family's converter; "auto" (a file outside the registry) read in the convention whose
    keys fit the model best: timm's (ours) when the file has all of them, else the family's official or
    transformers converter when its output shares more keys with the model."""
    family = target.card.family
    if keys == TIMM:
        return sd, keys
    if keys != "auto":
        converter = official_converter(family, keys)
        if converter is None:
            raise ValueError(f"no {keys}-checkpoint converter for {target.model_name} ({family})")
        return converter(dict(sd), target), keys
    own = set(target.state_dict())
    best, best_keys, fit = sd, TIMM, len(set(sd) & own)
    if own <= set(sd):
        return best, best_keys
    for convention in (OFFICIAL, TRANSFORMERS):
        converter = official_converter(family, convention)
        if converter is None:
            continue
        try:
            converted = converter(dict(sd), target)
        except (KeyError, ValueError, IndexError, RuntimeError):   # a converter meeting keys not of its convention
            continue
        if len(set(converted) & own) > fit:
            best, best_keys, fit = converted, convention, len(set(converted) & own)
    return best, best_keys


def _adapt_head(sd: dict[str, torch.Tensor], own: dict[str, torch.Tensor], heads: tuple[str, ...]) -> list[str]:
    """Drop the classifier tensors that do not fit the model (another number of classes, or no classifier);
    the model keeps its freshly initialised ones, as it does for a classifier layer of which the file has no
    tensor at all (a release without classifier, num_classes 0). Returns the dropped keys, then the model's
    classifier keys the file lacks that way (a layer the file has only some tensors of is left to `_check_fit`)."""
    absent = {h for h in heads if not any(k.rpartition(".")[0] == h for k in sd)}
    dropped = []
    for key in sorted(k for k in sd if k.rpartition(".")[0] in heads):
        if key not in own or own[key].shape != sd[key].shape:
            del sd[key]
            dropped.append(key)
    return dropped + sorted(k for k in own if k.rpartition(".")[0] in absent)


def _adapt_stem(sd: dict[str, torch.Tensor], own: dict[str, torch.Tensor], convs: tuple[str, ...]) -> list[str]:
    """Adapt the input convolutions' weights to the model's number of input channels. Returns 'key (a -> b)' for
    each adapted weight."""
    adapted = []
    for key in (f"{c}.weight" for c in convs):
        if key in sd and key in own and sd[key].dim() == 4 and sd[key].shape[1] != own[key].shape[1]:
            adapted.append(f"{key} ({sd[key].shape[1]} -> {own[key].shape[1]} channels)")
            sd[key] = adapt_input_conv(sd[key], own[key].shape[1])
    return adapted


def _check_fit(name: str, sd: dict[str, torch.Tensor], own: dict[str, torch.Tensor], reset: list[str]) -> None:
    """ValueError in one line unless `sd` fills every tensor of the model (except the reset classifier) with the
    right shapes and has nothing the model lacks."""
    heads = {k.rpartition(".")[0] for k in reset}
    missing = [k for k in own if k not in sd and k.rpartition(".")[0] not in heads]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and sd[k].shape != own[k].shape]
    parts = [f"{len(v)} {what} ({', '.join(v[:3])}{', ...' if len(v) > 3 else ''})"
             for what, v in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes))
             if v]
    if parts:
        raise ValueError(f"weights do not fit {name}: " + "; ".join(parts))


def load_pretrained(model: nn.Module, name: str, pretrained: bool | str | os.PathLike, *,
                    num_classes: int | None = None, in_chans: int | None = None) -> LoadReport:
    """Load pretrained weights into `model` (a registered variant `name`) in place. `num_classes` / `in_chans`:
    what the caller built it with (checked against the model; None: not checked).

    A classifier of another size is dropped and left at its fresh initialisation; input convolutions trained on
    another number of channels are adapted (`adapt_input_conv`); each says so in one logged line. Everything else
    must fit exactly: ValueError in one line naming what does not.
    """
    from ..features import FeatureExtractor

    target = model.model if isinstance(model, FeatureExtractor) else model
    name = resolve_name(name)
    for what, want in (("num_classes", num_classes), ("in_chans", in_chans)):
        have = getattr(target, what, None)
        if want is not None and have is not None and want != have:
            raise ValueError(f"{what}={want} but the model was built with {what}={have}")
    path, release = resolve(name, pretrained)
    sd, keys = _to_our_keys(target, read_state_dict(path), release.keys if release else "auto")
    own = target.state_dict()
    convs, heads = transfer_layers(name)
    in_file = set(sd)
    reset = _adapt_head(sd, own, heads)
    adapted = _adapt_stem(sd, own, convs)
    _check_fit(name, sd, own, reset)
    notes = []
    if reset:
        n = getattr(target, "num_classes", num_classes)
        dropped, absent = [k for k in reset if k in in_file], [k for k in reset if k not in in_file]
        why = ([f"dropped {', '.join(dropped)} from {path.name}"] if dropped else []) + (
            [f"{path.name} has no {', '.join(absent)}"] if absent else [])
        notes.append(f"{name}: classifier re-initialised for {n} classes ({'; '.join(why)})")
    if adapted:
        notes.append(f"{name}: input convolution adapted to the model's input channels: {', '.join(adapted)}")
    for note in notes:
        logger.warning(note)
    meta = any(t.is_meta for t in own.values())
    target.load_state_dict(sd, strict=False, assign=meta)
    return LoadReport(path, release, keys, tuple(reset), tuple(adapted), tuple(notes))


def check_release_keys(release: Release, state_dict: dict[str, torch.Tensor]) -> None:
    """ValueError in one line unless `state_dict`, in the release's key convention, maps onto the keys and shapes of
    its variant (classifier aside). The variant is built on the meta device: nothing is allocated."""
    with torch.device("meta"):
        model = create_model(release.model, num_classes=1000)
    ours, _ = _to_our_keys(model, dict(state_dict), release.keys)
    own = model.state_dict()
    _check_fit(release.model, ours, own, _adapt_head(ours, own, tuple(classifier_names(model, 1000))))


def import_file(path: str | os.PathLike, tag: str) -> Path:
    """Verify a weights file downloaded by hand for the release `tag`, and cache it for `pretrained=tag`.

    The file is read without unpickling anything but tensors, checked against the release's SHA-256 (when the
    publisher gives one) and against the variant (`check_release_keys`), then written as `<tag>.safetensors` in
    torch.hub's checkpoint directory (atomically), in the release's own keys."""
    release = release_by_tag(tag)
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"no weights file at {path}")
    if release.sha256 is not None:
        got = sha256_of(path)
        if got != release.sha256:
            raise ValueError(f"{path} has SHA-256 {got}; {tag} is published with {release.sha256}")
    sd = read_state_dict(path)
    check_release_keys(release, sd)
    check_finite(sd, str(path))
    return save_weights(sd, imported_path(release), metadata={"tag": tag, "keys": release.keys})


def cached_path(release: Release) -> Path:
    """The local file of a release without downloading anything: ValueError in one line, saying how to get it, when
    it is not cached."""
    previous = remote._offline
    remote.set_offline(True)
    try:
        return fetch(release)
    except ValueError:
        if release.source == MANUAL:
            raise
        hint = f"`convscope weights download {release.tag}` fetches it"
        raise ValueError(f"{release.tag} is not cached; {hint}") from None
    finally:
        remote.set_offline(previous)


def verify_file(path: str | os.PathLike, release: Release) -> list[str]:
    """Check a weights file against a release: its SHA-256 when the publisher gives one (a file `import_file`
    cached was checked when imported), its keys and shapes through the family's converter, finite values. The
    checks passed, one line each; ValueError in one line at the first that fails."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"no weights file at {path}")
    done = []
    if path == imported_path(release):
        done.append(f"imported: {path.name} (its SHA-256 was checked when it was imported)")
    elif release.sha256 is not None:
        got = sha256_of(path)
        if got != release.sha256:
            raise ValueError(f"{path} has SHA-256 {got}; {release.tag} is published with {release.sha256}")
        done.append(f"SHA-256 {got} as published")
    else:
        done.append(f"SHA-256 {sha256_of(path)} (the publisher gives none to compare with)")
    sd = read_state_dict(path)
    check_release_keys(release, sd)
    done.append(f"{len(sd)} tensors fit {release.model} ({release.keys} keys)")
    check_finite(sd, str(path))
    done.append("all values finite")
    return done
