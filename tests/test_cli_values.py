"""The CLI's value parsers (convscope.cli.values): one set of limits per kind of value."""
from __future__ import annotations

import argparse

import pytest

from convscope.cli import values
from convscope.limits import MAX_SIDE, MAX_THREADS


def test_input_size():
    assert values.input_size("224") == (224, 224)
    assert values.input_size("224x288") == (224, 288)
    assert values.input_size(f"1X{MAX_SIDE}") == (1, MAX_SIDE)
    for bad in ("0", "-3", "x", "224x", "1x2x3", "²", f"{MAX_SIDE + 1}", f"32x{MAX_SIDE + 1}", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="positive integer or HxW"):
            values.input_size(bad)


def test_input_shape_caps_the_elements():
    assert values.input_shape(2, (3, 224, 224), None) == (2, 3, 224, 224)
    assert values.input_shape(2, (1, 28, 28), (32, 48)) == (2, 1, 32, 48)
    with pytest.raises(ValueError, match="--batch 64 at 4096x4096 is a 12 GiB input"):
        values.input_shape(64, (3, 224, 224), (4096, 4096))


def test_ints_and_threads():
    assert values.positive_int("3") == 3 and values.non_negative_int("0") == 0
    assert values.threads(str(MAX_THREADS)) == MAX_THREADS
    for parse, bad in ((values.positive_int, "0"), (values.non_negative_int, "-1"), (values.threads, "0"),
                       (values.threads, str(MAX_THREADS + 1)), (values.positive_int, "1.5"),
                       (values.positive_int, "x")):
        with pytest.raises(argparse.ArgumentTypeError, match="expected an integer"):
            parse(bad)


def test_float_range_is_finite_and_honours_open_ends():
    unit = values.float_range(0, 1, hi_open=True)
    assert unit("0") == 0.0 and unit("0.5") == 0.5
    for bad, needle in (("1", r"in \[0, 1\)"), ("-0.1", "finite"), ("nan", "finite"), ("inf", "finite"),
                        ("x", "expected a number")):
        with pytest.raises(argparse.ArgumentTypeError, match=needle):
            unit(bad)
    assert values.float_range(0)("1e6") == 1e6
    with pytest.raises(argparse.ArgumentTypeError, match=">= 0"):
        values.float_range(0)("-1")
    with pytest.raises(argparse.ArgumentTypeError, match="> 0"):
        values.float_range(0, lo_open=True)("0")


def test_comma_list():
    steps = values.comma_list(("a", "b", "c"))
    assert steps("c, a,,c") == ("c", "a")
    for bad in (",", "", "a,d"):
        with pytest.raises(argparse.ArgumentTypeError, match="comma-separated list of a,b,c"):
            steps(bad)


def test_output_and_input_paths(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    (tmp_path / "d").mkdir()
    (tmp_path / "dangling").symlink_to(tmp_path / "gone")
    assert values.output_file()(str(tmp_path / "new" / "r.json")) == tmp_path / "new" / "r.json"
    assert values.output_dir(str(tmp_path / "d")) == tmp_path / "d"
    for parse, path, needle in ((values.output_file(), "d", "is a directory"),
                                (values.output_file(), "f.txt/x", "is a file, not a directory"),
                                (values.output_file(".safetensors"), "w.pt", "expected a .safetensors file"),
                                (values.output_file(), "dangling", "symbolic link"),
                                (values.output_dir, "f.txt", "is a file, not a directory"),
                                (values.output_dir, "dangling", "symbolic link"),
                                (values.input_file, "d", "existing file"),
                                (values.input_file, "missing", "existing file")):
        with pytest.raises(argparse.ArgumentTypeError, match=needle):
            parse(str(tmp_path / path))
    assert not (tmp_path / "new").exists()   # a check writes nothing


def test_check_distinct(tmp_path):
    src = tmp_path / "w.safetensors"
    src.write_bytes(b"w")
    (tmp_path / "same.safetensors").symlink_to(src)
    values.check_distinct({"--out": [tmp_path / "p.safetensors"]}, {"the source": src, "a model name": "convnext"})
    for out in (src, tmp_path / "same.safetensors", tmp_path / "sub" / ".." / "w.safetensors"):
        with pytest.raises(ValueError, match="--out would overwrite the source"):
            values.check_distinct({"--out": [out]}, {"the source": src})


def test_data_source(tmp_path):
    assert values.data_source("fashion-mnist") == "fashion-mnist"
    assert values.data_source(str(tmp_path)) == str(tmp_path)
    for bad in ("", "fashion_mnist", str(tmp_path / "missing")):
        with pytest.raises(argparse.ArgumentTypeError, match="fashion-mnist, synthetic or a data directory"):
            values.data_source(bad)
