"""`convscope weights list | download | import | verify` against the loopback Hub server and isolated caches: what
they print, what they cache (the caches create_model(pretrained=...) reads) and their one-line errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import convscope
from convscope.cli import main
from convscope.models import pretrained as hub
from convscope.models import save_weights

FIXTURES = Path(__file__).parents[1] / "data" / "official_keys"


def _run(capsys, *argv: str) -> tuple[int, list[str], list[str]]:
    code = main(["weights", *argv])
    out, err = capsys.readouterr()
    return code, out.strip().splitlines(), err.strip().splitlines()


def _atto_state_dict() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    with torch.device("meta"):
        own = convscope.create_model("convnext_atto").state_dict()
    return {k: torch.randn(v.shape, generator=gen) for k, v in own.items()}


@pytest.fixture
def hub_server(server, monkeypatch):
    """The loopback server as the Hugging Face Hub endpoint."""
    pytest.importorskip("huggingface_hub")
    from huggingface_hub import constants
    base, state = server
    monkeypatch.setattr(constants, "ENDPOINT", base)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", base + "/{repo_id}/resolve/{revision}/{filename}")
    return state


def test_list_all_and_one_model(capsys):
    code, out, _ = _run(capsys, "list", "--json")
    rows = json.loads("\n".join(out))
    assert code == 0 and len(rows) == len(hub.RELEASES) and not any(r["cached"] for r in rows)
    code, out, _ = _run(capsys, "list", "--model", "convnext_atto")
    assert code == 0 and out[2].split()[:3] == ["convnext_atto.d2_in1k", "convnext_atto", "hf-hub"]
    assert out[-1] == "1 releases; a variant's first is its default (pretrained=True)."
    code, _, err = _run(capsys, "list", "--model", "convnext_atoo")
    assert code == 2 and len(err) == 1 and "did you mean convnext_atto" in err[0]


def test_download_verify_then_create_model_offline(hub_server, capsys, caches):
    source = _atto_state_dict()
    path = save_weights(source, caches["hf"].parent / "upload.safetensors")
    hub_server.files["/timm/convnext_atto.d2_in1k/resolve/main/model.safetensors"] = path.read_bytes()
    code, _, err = _run(capsys, "verify", "convnext_atto")
    assert code == 2 and err == ["convscope: error: convnext_atto.d2_in1k is not cached; "
                                 "`convscope weights download convnext_atto.d2_in1k` fetches it"]
    code, out, _ = _run(capsys, "download", "convnext_atto")
    cached = Path(out[0])
    assert code == 0 and cached.read_bytes() == path.read_bytes() and str(caches["hf"]) in str(cached)
    code, out, _ = _run(capsys, "list", "--model", "convnext_atto", "--json")
    assert json.loads("\n".join(out))[0]["cached"] is True
    code, out, _ = _run(capsys, "verify", "convnext_atto.d2_in1k")
    assert code == 0 and out[1] == f"convnext_atto.d2_in1k: {len(source)} tensors fit convnext_atto (timm keys)"
    assert out[2:] == ["convnext_atto.d2_in1k: all values finite", f"convnext_atto.d2_in1k: {cached} verified"]
    hub.set_offline(True)
    model = convscope.create_model("convnext_atto", pretrained=True)
    assert all(torch.equal(v, source[k]) for k, v in model.state_dict().items())


def _official_biformer(tmp_path: Path, poison: bool = False) -> Path:
    spec = json.loads((FIXTURES / "biformer_tiny.json").read_text())
    gen = torch.Generator().manual_seed(1)
    official = {k: torch.randn(shape, generator=gen) for k, shape in spec["keys"].items()}
    if poison:
        official["head.weight"][0, 0] = float("nan")
    torch.save({"model": official}, tmp_path / "downloaded.pth")
    return tmp_path / "downloaded.pth"


def test_import_then_verify_a_manual_release(tmp_path, capsys, caches):
    file = _official_biformer(tmp_path)
    code, out, _ = _run(capsys, "import", str(file), "--model", "biformer_tiny")
    cached = caches["torch"] / "biformer_tiny.official_in1k.safetensors"
    assert code == 0 and out == [f"{file} verified for biformer_tiny.official_in1k and cached as {cached}"]
    code, out, _ = _run(capsys, "verify", "biformer_tiny.official_in1k")
    assert code == 0 and out[0].startswith("biformer_tiny.official_in1k: imported: ")
    hub.set_offline(True)
    model = convscope.create_model("biformer_tiny", pretrained=True)
    assert torch.equal(model.state_dict()["head.fc.weight"], torch.load(file)["model"]["head.weight"])


def test_import_and_verify_refuse_in_one_line(tmp_path, capsys, caches):
    code, _, err = _run(capsys, "import", str(_official_biformer(tmp_path, poison=True)), "--model", "biformer_tiny")
    assert code == 2 and len(err) == 1 and "tensor 'head.weight' holds NaN or infinity" in err[0], err
    save_weights(_atto_state_dict(), tmp_path / "atto.safetensors")
    code, _, err = _run(capsys, "import", str(tmp_path / "atto.safetensors"), "--model", "biformer_tiny")
    assert code == 2 and len(err) == 1 and "weights do not fit biformer_tiny: " in err[0], err
    assert not caches["torch"].exists() or not list(caches["torch"].glob("*.safetensors"))
    code, out, _ = _run(capsys, "verify", str(tmp_path / "atto.safetensors"), "--model", "convnext_atto.d2_in1k")
    assert code == 0 and out[-1].endswith("atto.safetensors verified")
    code, _, err = _run(capsys, "verify", str(tmp_path / "atto.safetensors"))
    assert code == 2 and len(err) == 1 and "--model NAME[.TAG]" in err[0]
    code, _, err = _run(capsys, "verify", str(tmp_path / "atto.safetensors"), "--model", "biformer_tiny")
    assert code == 2 and len(err) == 1 and "weights do not fit biformer_tiny" in err[0]
    code, _, err = _run(capsys, "download", "biformer_tiny")
    assert code == 2 and len(err) == 1
    assert "`convscope weights import FILE --model biformer_tiny.official_in1k`" in err[0]


def test_train_pretrained_by_name_takes_the_default_release(caches):
    """`convscope train --pretrained convnext_atto` (a variant's name: its default release, here from a seeded Hub
    cache, offline) starts from those weights with a classifier for the data's classes."""
    from convscope.train import TrainConfig, train

    source = _atto_state_dict()
    release = hub.find_release("convnext_atto")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = caches["hf"] / f"models--{release.location.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    save_weights(source, repo / "snapshots" / commit / release.filename)
    hub.set_offline(True)
    cfg = TrainConfig(model="convnext_atto", pretrained="convnext_atto", data="synthetic", synthetic_size=16,
                      epochs=1, batch_size=8, lr=1e-9, min_lr=0.0, warmup_epochs=0, drop_path=0.0, progress="none",
                      device="cpu", threads=1, out=str(caches["hf"].parent / "run"))
    model = train(cfg).model.state_dict()
    assert model["head.fc.weight"].shape == (4, 320)
    assert max((model[k] - source[k]).abs().max().item() for k in source if not k.startswith("head.fc.")) < 1e-6
