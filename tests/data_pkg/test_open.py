"""`open_dataset` and `probe_data`: every data spec opened for every split, with the checks the callers share."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import convscope.data
from convscope.data import FASHION_MNIST_CLASSES, SyntheticOptions, open_dataset, probe_data


def _images(root: Path, n: int, classes=("a", "b"), rgb: bool = False) -> Path:
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for j in range(n):
            Image.fromarray(rng.integers(0, 256, (24, 20, 3) if rgb else (24, 20), dtype=np.uint8)).save(
                root / c / f"{j}.png")
    return root


def test_fashion_mnist_splits_channels_and_expected_classes():
    train = open_dataset("fashion-mnist", "train", held_out=0.1)
    assert len(train.dataset) == 60_000 and len(train.held_out) == 10_000 and train.in_chans == 1
    assert train.classes == FASHION_MNIST_CLASSES and train.facts.native_size == (28, 28) and train.facts.gray
    val = open_dataset("fashion-mnist", "val", in_chans=3)
    assert len(val.dataset) == 10_000 and val.held_out is None and val.dataset.images.shape[1:] == (3, 28, 28)
    assert val.description == "Fashion-MNIST (default location)"
    with pytest.raises(ValueError, match=r"the data's classes \['T-shirt/top', .*\] differ from the model's \['a'"):
        open_dataset("fashion-mnist", "test", classes=("a", "b"))


def test_synthetic_and_bad_specs():
    opened = open_dataset("synthetic", "train", held_out=0.5, synthetic_options=SyntheticOptions(40, 3, 16))
    assert (len(opened.dataset), len(opened.held_out), opened.in_chans) == (40, 10, 3)
    assert opened.classes == ("class0", "class1", "class2") and opened.facts.native_size == (16, 16)
    with pytest.raises(ValueError, match="split must be one of train, val, test; got 'dev'"):
        open_dataset("synthetic", "dev")
    with pytest.raises(FileNotFoundError, match="neither 'fashion-mnist', 'synthetic' nor a directory"):
        open_dataset("/nonexistent/dir", "train")


def test_a_flat_folder_is_one_split_or_split_by_a_seeded_fraction(tmp_path):
    root = _images(tmp_path / "d", 5)
    facts = probe_data(root)
    assert (facts.kind, facts.classes, facts.native_size, facts.gray, facts.n_images) == (
        "folder", ("a", "b"), (24, 20), True, 10)
    for split in ("train", "val", "test"):   # evaluation on a folder without split subfolders: all of it
        assert len(open_dataset(root, split, load_size=16).dataset) == 10
    opened = open_dataset(root, "train", load_size=16, held_out=0.3, seed=1)
    assert len(opened.dataset) == 7 and len(opened.held_out) == 3
    assert not set(opened.dataset.indices) & set(opened.held_out.indices)
    assert opened.description == f"image folder {root} (7 train / 3 eval images, 24x20 grayscale)"
    with pytest.raises(ValueError, match="needs a load size >= 1; got None"):
        open_dataset(root, "train")


def test_a_train_val_folder_gives_each_split_its_subfolder(tmp_path):
    root = tmp_path / "d"
    _images(root / "train", 4, rgb=True)
    _images(root / "val", 2, rgb=True)
    facts = probe_data(root)
    assert facts.n_images == 12 and not facts.gray and facts.held_out_root == root / "val"
    opened = open_dataset(root, "train", load_size=8, held_out=0.1)
    assert (len(opened.dataset), len(opened.held_out), opened.in_chans) == (8, 4, 3)
    assert opened.dataset[0][0].shape == (3, 8, 8)
    for split in ("val", "test"):
        assert len(open_dataset(root, split, load_size=8, classes=("a", "b"), in_chans=1).dataset) == 4
    with pytest.raises(ValueError, match=r"lacks class directories \['c'\]"):
        open_dataset(root, "val", load_size=8, classes=("a", "b", "c"))
    only_train = tmp_path / "t"
    _images(only_train / "train", 2)
    with pytest.raises(ValueError, match="has train/ but no val/ or test/ subfolder to take the 'test' split"):
        open_dataset(only_train, "test", load_size=8)


def test_unreadable_files_are_returned_by_path_and_reported_once(tmp_path):
    root = _images(tmp_path / "d", 3)
    (root / "b" / "noise.png").write_bytes(b"\x00" * 50)
    messages = []
    opened = open_dataset(root, "val", load_size=8, report=messages.append)
    assert opened.skipped == (str(root / "b" / "noise.png"),) and len(opened.dataset) == 6
    assert len(messages) == 1 and "noise.png" in messages[0]


def test_default_report_is_one_line_on_stderr_not_a_python_warning(tmp_path, capsys, recwarn):
    root = _images(tmp_path / "d", 2)
    (root / "a" / "empty.png").write_bytes(b"")
    open_dataset(root, "test", load_size=8)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("convscope: warning: ") and "empty.png" in err[0]
    assert len(recwarn) == 0


def test_a_folder_without_pillow_is_refused_naming_the_extra(tmp_path, monkeypatch):
    root = _images(tmp_path / "d", 1)
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ValueError, match=r"reading an image folder needs pillow, which is not installed: pip "
                                         r"install 'convscope\[lab\]'"):
        open_dataset(root, "test", load_size=8)


def test_the_data_package_imports_only_utils_files_and_extras():
    """Floor 2 of the layering: never models, train, deploy or analysis."""
    allowed = {"utils", "files", "extras"}
    for path in Path(convscope.data.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 2:
                assert (node.module or "").split(".")[0] in allowed, f"{path.name} imports ..{node.module}"
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                assert not node.module.startswith("convscope"), f"{path.name} imports {node.module}"
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("convscope") for a in node.names), path.name
