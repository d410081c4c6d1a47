"""Fetching weight files into the standard caches, and the offline switch.

Hugging Face Hub files go through `huggingface_hub.hf_hub_download` (its cache: HF_HOME / HF_HUB_CACHE; it resumes
and writes atomically itself). URL files go to torch.hub's cache, `TORCH_HOME/hub/checkpoints` (what
`torch.hub.download_url_to_file` uses), through a download of our own, for what torch's lacks: it resumes an
interrupted transfer (HTTP Range on a `.partial` file beside the target), refuses a body shorter than its
Content-Length and keeps two processes off the same download (a POSIX lock file). The SHA-256 is checked before the
file is renamed into place, so a corrupted or truncated file is never cached. Offline (`set_offline(True)`,
CONVSCOPE_OFFLINE=1 or HF_HUB_OFFLINE=1) nothing is downloaded: a file that is not cached is named in one line with
the way to import it.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import re
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import torch

from ...extras import available
from ...files import fsync_dir

OFFLINE_ENV = "CONVSCOPE_OFFLINE"
HUB_EXTRA_HINT = "pip install 'convscope[hub]'"
_TRUE = ("1", "true", "yes", "on")
_CHUNK = 1 << 20
_offline: bool | None = None


def set_offline(offline: bool | None) -> None:
    """Switch downloads off (True) or on (False); None goes back to the environment (CONVSCOPE_OFFLINE,
    HF_HUB_OFFLINE)."""
    global _offline
    _offline = offline


def is_offline() -> bool:
    """Whether downloads are off: `set_offline`, else CONVSCOPE_OFFLINE or HF_HUB_OFFLINE set to 1/true/yes/on."""
    if _offline is not None:
        return _offline
    return any(os.environ.get(k, "").strip().lower() in _TRUE for k in (OFFLINE_ENV, "HF_HUB_OFFLINE"))


def checkpoint_dir() -> Path:
    """torch.hub's checkpoint cache: TORCH_HOME/hub/checkpoints (TORCH_HOME defaults to ~/.cache/torch)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def url_file_name(url: str) -> str | None:
    """The file name at the end of a URL's path (`name.ext`), None when the path does not end in one."""
    name = Path(urlparse(url).path).name
    return name if re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*\.[A-Za-z0-9]+", name) else None


def sha256_of(path: str | os.PathLike) -> str:
    """The SHA-256 of a file, in hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _open(url: str, offset: int):
    """The response for `url` from byte `offset` on (a Range request when offset > 0)."""
    req = urllib.request.Request(url, headers={"User-Agent": "convscope"})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    return urllib.request.urlopen(req, timeout=60)


def _expected_size(resp, offset: int) -> int | None:
    """The full file size the response announces (None when it does not say)."""
    if resp.status == 206:
        total = resp.headers.get("Content-Range", "").rpartition("/")[2]
        return int(total) if total.isdigit() else None
    length = resp.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def _transfer(url: str, partial: Path) -> None:
    """Download `url` into `partial`, resuming from what it holds; ValueError when the body ends short."""
    offset = partial.stat().st_size if partial.is_file() else 0
    try:
        resp = _open(url, offset)
    except urllib.error.HTTPError as e:
        if e.code != 416 or not offset:   # 416: the partial file already holds everything (or is wrong)
            raise
        resp = _open(url, 0)
        offset = 0
    with resp:
        if resp.status != 206:
            offset = 0                        # the server ignored the Range: start again
        total = _expected_size(resp, offset)
        with open(partial, "r+b" if offset else "wb") as f:
            f.seek(offset)
            f.truncate()
            for block in iter(lambda: resp.read(_CHUNK), b""):
                f.write(block)
            f.flush()
            os.fsync(f.fileno())
            size = f.tell()
    if total is not None and size != total:
        raise ValueError(f"download of {url} ended after {size} of {total} bytes; run again to resume")


def _verify_and_place(url: str, partial: Path, dest: Path, sha256: str | None) -> None:
    """Check a finished `.partial` file against `sha256` (a mismatch deletes it) and rename it to `dest`."""
    if sha256 is not None:
        got = sha256_of(partial)
        if got != sha256.lower():
            partial.unlink()
            raise ValueError(f"{url} has SHA-256 {got}, expected {sha256}: the file is corrupted or truncated; "
                             "nothing was cached")
    os.replace(partial, dest)
    fsync_dir(dest.parent)


def download_url(url: str, dest: str | os.PathLike, sha256: str | None = None, *, hint: str = "") -> Path:
    """Fetch `url` to `dest` unless it is there already (a cache hit does not touch the network).

    The file is written to a `.partial` file beside `dest` (kept for resuming when the transfer breaks), checked
    against `sha256` when given (a mismatch deletes it: nothing is cached) and renamed to `dest`. One process
    downloads a given file at a time (a lock file beside it); the others wait, then find it cached. Offline, a
    missing `dest` is a ValueError in one line ending with `hint` (how to get the file otherwise)."""
    dest = Path(dest)
    if dest.is_file():
        return dest
    if is_offline():
        raise ValueError(f"offline and {dest} is not cached (from {url})" + (f"; {hint}" if hint else ""))
    partial = dest.with_name(f".{dest.name}.partial")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(dest.with_name(f".{dest.name}.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not dest.is_file():
                _transfer(url, partial)
                _verify_and_place(url, partial, dest, sha256)
    except (urllib.error.URLError, OSError) as e:
        raise ValueError(f"could not download {url} to {dest}: {getattr(e, 'reason', e)}") from None
    return dest


def hub_download(repo_id: str, filename: str, *, revision: str | None = None, hint: str = "",
                 fallback: str | None = None) -> Path:
    """A file of a Hugging Face Hub repository, through huggingface_hub's cache (only the cache when offline);
    `fallback`: the file to take when the repository (or the cache) lacks `filename` (timm: pytorch_model.bin
    for model.safetensors).

    ValueError in one line when huggingface_hub is not installed (naming the extra), when offline and the file
    is not cached (ending with `hint`), or when the Hub does not have it."""
    if not available("huggingface_hub"):
        raise ValueError(f"downloading hf-hub:{repo_id} needs huggingface_hub, which is not installed: "
                         f"{HUB_EXTRA_HINT} (or pass the path of a local weights file)")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    offline = is_offline()
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, local_files_only=offline))
    except EntryNotFoundError as e:      # LocalEntryNotFoundError included: not in the cache, or Hub unreachable
        if fallback is not None:
            try:
                return hub_download(repo_id, fallback, revision=revision)
            except ValueError:
                pass
        if not isinstance(e, LocalEntryNotFoundError):
            why = "the repository has no such file"
        else:
            why = "offline and it is not in the Hugging Face cache" if offline else "the Hub could not be reached"
        raise ValueError(f"hf-hub:{repo_id}/{filename}: {why}" + (f"; {hint}" if hint else "")) from None
    except Exception as e:  # huggingface_hub's HTTP and repository errors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"could not download hf-hub:{repo_id}/{filename}: {first}") from None
