"""Downloads on the real code paths, against a loopback HTTP server and a seeded Hugging Face cache: the hash check,
the cache, resuming, offline mode and the missing-extra message."""
from __future__ import annotations

import hashlib
import io
import json
import threading
from pathlib import Path

import pytest
import torch

import convscope
from convscope.models import pretrained as hub
from convscope.models import save_weights
from convscope.models.pretrained import load as hub_load
from convscope.models.pretrained.registry import OFFICIAL, URL, Release

FIXTURES = Path(__file__).parents[1] / "data" / "official_keys"


def _official_atto() -> dict[str, torch.Tensor]:
    """A ConvNeXt-atto state dict with the official repository's exact keys and shapes, distinct values."""
    spec = json.loads((FIXTURES / "convnext_atto.json").read_text())
    return {k: torch.full(shape, float(i) / 100) for i, (k, shape) in enumerate(spec["keys"].items())}


def _meta_model(name: str) -> torch.nn.Module:
    """A model built on the meta device (no initialisation work): loading assigns the file's tensors to it."""
    with torch.device("meta"):
        return convscope.create_model(name)


def _random_state_dict(name: str) -> dict[str, torch.Tensor]:
    """Random tensors with the keys and shapes of a variant's state dict (ours)."""
    gen = torch.Generator().manual_seed(0)
    return {k: torch.randn(v.shape, generator=gen) if v.is_floating_point() else torch.zeros(v.shape, dtype=v.dtype)
            for k, v in _meta_model(name).state_dict().items()}


def _torch_bytes(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _cached(directory: Path) -> list[str]:
    """The files in a cache directory, less the download lock files (which stay, empty)."""
    return sorted(p.name for p in directory.iterdir() if not p.name.endswith(".lock")) if directory.exists() else []


def _release(base: str, sha256: str | None) -> Release:
    return Release("convnext_atto", "convnext_atto.test_official", URL, f"{base}/atto.pth", "atto_official.pth",
                   sha256, "ImageNet-1k", 224, None, "mit", OFFICIAL, 1000, "generated for the test")


def test_url_release_downloads_checks_hash_and_hits_the_cache(server, caches, monkeypatch):
    base, state = server
    data = _torch_bytes({"model": _official_atto()})
    state.files["/atto.pth"] = data
    release = _release(base, hashlib.sha256(data).hexdigest())
    monkeypatch.setattr(hub_load, "RELEASES", (release,))
    model = _meta_model("convnext_atto")
    report = hub.load_pretrained(model, "convnext_atto", f"{base}/atto.pth")
    assert report.release == release and report.keys == "official"
    assert report.path == caches["torch"] / "atto_official.pth" and report.path.read_bytes() == data
    # the official tensor landed in our key (the converter ran)
    assert torch.equal(model.stem[0].weight, _official_atto()["downsample_layers.0.0.weight"])
    assert len(state.requests) == 1
    hub.load_pretrained(_meta_model("convnext_atto"), "convnext_atto", f"{base}/atto.pth")
    assert len(state.requests) == 1, "the second load went to the network instead of the cache"


@pytest.mark.parametrize("damage", ["corrupted", "truncated"])
def test_hash_mismatch_refuses_and_caches_nothing(server, caches, damage):
    base, state = server
    data = _torch_bytes({"model": _official_atto()})
    bad = data[:-1000] if damage == "truncated" else data[:500] + bytes([data[500] ^ 0xFF]) + data[501:]
    state.files["/atto.pth"] = bad
    release = _release(base, hashlib.sha256(data).hexdigest())
    with pytest.raises(ValueError, match="SHA-256 .* corrupted or truncated; nothing was cached"):
        hub.fetch(release)
    assert _cached(caches["torch"]) == []


def test_broken_transfer_is_refused_then_resumed(server, caches):
    base, state = server
    data = _torch_bytes({"model": _official_atto()})
    state.files["/atto.pth"] = data
    state.short["/atto.pth"] = 4096        # the connection drops after 4 KiB
    release = _release(base, hashlib.sha256(data).hexdigest())
    with pytest.raises(ValueError, match=f"ended after 4096 of {len(data)} bytes"):
        hub.fetch(release)
    assert not (caches["torch"] / "atto_official.pth").exists()
    del state.short["/atto.pth"]
    path = hub.fetch(release)
    assert path.read_bytes() == data
    assert state.requests[-1] == ("/atto.pth", "bytes=4096-"), "the second try did not resume"
    assert _cached(caches["torch"]) == ["atto_official.pth"]


def test_two_downloads_of_one_file_fetch_it_once(server, caches):
    base, state = server
    state.files["/w.bin"] = b"weights" * 1000
    state.delay = 0.5               # the first download is still running when the second starts
    dest = caches["torch"] / "w.bin"
    threads = [threading.Thread(target=hub.download_url, args=(f"{base}/w.bin", dest)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert dest.read_bytes() == state.files["/w.bin"]
    assert state.requests == [("/w.bin", None)], "both downloaded: the lock did not hold the second back"


@pytest.mark.parametrize("switch", ["function", "CONVSCOPE_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_fails_in_one_line_without_a_request(server, monkeypatch, switch):
    base, state = server
    state.files["/atto.pth"] = b"x"
    if switch == "function":
        hub.set_offline(True)
    else:
        monkeypatch.setenv(switch, "1")
    with pytest.raises(ValueError) as info:
        hub.fetch(_release(base, None))
    message = str(info.value)
    assert "\n" not in message and "offline" in message
    assert "convscope.models.pretrained.import_file(path, 'convnext_atto.test_official')" in message
    assert state.requests == []


def test_manual_release_needs_import_then_loads_offline(tmp_path, caches):
    release = hub.find_release("biformer_tiny")
    assert release.source == "manual"
    with pytest.raises(ValueError, match="cannot be downloaded by a program; download it by hand from https://"):
        hub.load_pretrained(_meta_model("biformer_tiny"), "biformer_tiny", True)
    spec = json.loads((FIXTURES / "biformer_tiny.json").read_text())
    official = {k: torch.randn(shape) for k, shape in spec["keys"].items()}
    torch.save({"model": official}, tmp_path / "downloaded.pth")
    cached = hub.import_file(tmp_path / "downloaded.pth", release.tag)
    assert cached == caches["torch"] / "biformer_tiny.official_in1k.safetensors"
    hub.set_offline(True)
    model = _meta_model("biformer_tiny")
    report = hub.load_pretrained(model, "biformer_tiny", True)
    assert report.path == cached and report.keys == "official"
    assert torch.equal(model.state_dict()["head.fc.weight"], official["head.weight"])


def test_import_refuses_a_file_of_another_model(tmp_path):
    save_weights(_random_state_dict("convnext_atto"), tmp_path / "atto.safetensors")
    with pytest.raises(ValueError, match="weights do not fit biformer_tiny: .*missing keys"):
        hub.import_file(tmp_path / "atto.safetensors", "biformer_tiny.official_in1k")


def _seed_hf_cache(root: Path, repo_id: str, filename: str, sd: dict[str, torch.Tensor]) -> Path:
    """Put a file into a Hugging Face Hub cache the way hf_hub_download leaves it (refs/main -> snapshot)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return save_weights(sd, repo / "snapshots" / commit / filename)


def test_hub_release_from_a_seeded_cache_offline(caches):
    pytest.importorskip("huggingface_hub")
    source = _random_state_dict("convnext_atto")
    default = hub.find_release("convnext_atto")
    assert default.tag == "convnext_atto.d2_in1k" and default.location == "timm/convnext_atto.d2_in1k"
    seeded = _seed_hf_cache(caches["hf"], default.location, default.filename, source)
    hub.set_offline(True)
    for spec in (True, "d2_in1k", "convnext_atto.d2_in1k", "hf-hub:timm/convnext_atto.d2_in1k"):
        model = _meta_model("convnext_atto")
        report = hub.load_pretrained(model, "convnext_atto", spec)
        assert report.path.read_bytes() == seeded.read_bytes() and report.release == default
        assert all(torch.equal(v, source[k]) for k, v in model.state_dict().items())


def test_hub_endpoint_on_loopback_downloads_once_with_the_bin_fallback(server, monkeypatch):
    pytest.importorskip("huggingface_hub")
    from huggingface_hub import constants
    base, state = server
    monkeypatch.setattr(constants, "ENDPOINT", base)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", base + "/{repo_id}/resolve/{revision}/{filename}")
    source = _random_state_dict("convnext_atto")
    state.files["/someone/atto/resolve/main/pytorch_model.bin"] = _torch_bytes(source)   # no model.safetensors
    for _ in range(2):
        model = _meta_model("convnext_atto")
        report = hub.load_pretrained(model, "convnext_atto", "hf-hub:someone/atto")
        assert report.path.name == "pytorch_model.bin" and report.release is None
        assert torch.equal(model.stem[0].weight, source["stem.0.weight"])
    gets = [p for p, _ in state.requests if "/resolve/" in p and not p.startswith("HEAD ")]
    assert gets == ["/someone/atto/resolve/main/pytorch_model.bin"], "the second load downloaded again"


def test_hub_release_not_cached_offline_says_so(caches):
    pytest.importorskip("huggingface_hub")
    hub.set_offline(True)
    with pytest.raises(ValueError) as info:
        hub.download("convnext_atto.d2_in1k")
    assert "\n" not in str(info.value)
    assert "hf-hub:timm/convnext_atto.d2_in1k/model.safetensors: offline and it is not in the Hugging Face cache" \
        in str(info.value)


def test_missing_huggingface_hub_names_the_extra_and_local_files_still_load(tmp_path, monkeypatch):
    monkeypatch.setattr(hub.remote, "available", lambda module: module != "huggingface_hub")
    extra = r"needs huggingface_hub, which is not installed: pip install 'convscope\[hub\]'"
    with pytest.raises(ValueError, match=extra):
        hub.download("convnext_atto.d2_in1k")
    source = _random_state_dict("convnext_atto")
    save_weights(source, tmp_path / "local.safetensors")
    model = _meta_model("convnext_atto")
    hub.load_pretrained(model, "convnext_atto", tmp_path / "local.safetensors")
    assert torch.equal(model.stem[0].weight, source["stem.0.weight"])


@pytest.mark.parametrize("spec, match", [
    ("no_such_tag", r"convnext_atto has no release tagged 'no_such_tag'; expected one of convnext_atto.d2_in1k"),
    ("hf-hub:justone", r"expected 'hf-hub:org/repo'"),
    ("missing/file.pth", r"no weights file at missing/file.pth"),
    (3, r"pretrained must be True, a tag"),
])
def test_bad_specs_fail_in_one_line(spec, match):
    with pytest.raises((ValueError, TypeError), match=match):
        hub.resolve("convnext_atto", spec)


def test_variant_without_weights_says_why():
    with pytest.raises(ValueError, match="moat_0 has no pretrained weights: TensorFlow checkpoints only"):
        hub.resolve("moat_0", True)
