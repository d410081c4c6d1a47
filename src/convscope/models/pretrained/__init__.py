"""Trained weights: the registry of public releases, their download into the standard caches, and loading them into
a model (key conversion, classifier and input-channel transfer).

A core install loads local files; downloads from the Hugging Face Hub need the `hub` extra
(`pip install 'convscope[hub]'`: huggingface_hub). URLs use the standard library.
"""
from .adapt import adapt_input_conv, pretrained_cfg_layers, transfer_layers
from .load import (
    LoadReport,
    cached_path,
    check_release_keys,
    download,
    fetch,
    import_file,
    load_pretrained,
    resolve,
    verify_file,
)
from .registry import RELEASES, WITHOUT_WEIGHTS, Release, find_release, list_pretrained, release_by_tag, releases
from .remote import checkpoint_dir, download_url, hub_download, is_offline, set_offline

__all__ = [
    "RELEASES", "WITHOUT_WEIGHTS", "LoadReport", "Release", "adapt_input_conv", "cached_path", "check_release_keys",
    "checkpoint_dir", "download",
    "download_url", "fetch", "find_release", "hub_download", "import_file", "is_offline", "list_pretrained",
    "load_pretrained", "pretrained_cfg_layers", "release_by_tag", "releases", "resolve", "set_offline",
    "transfer_layers", "verify_file",
]
