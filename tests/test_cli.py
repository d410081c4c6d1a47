"""The `convscope` command: output, and one clear line with exit status 2 on errors."""
from __future__ import annotations

import json

import pytest

from convscope.cli import main
from convscope.models import list_models, model_card

from .conftest import run_cli


def test_list_table(capsys):
    assert main(["list", "convnext_t*"]) == 0
    out = capsys.readouterr().out
    assert "convnext_tiny" in out and "28.59" in out and "4.47" in out and "224x224" in out
    assert "convnext_small" not in out


def test_list_json_is_the_cards(capsys):
    assert main(["list", "--family", "caformer", "--format", "json"]) == 0
    cards = json.loads(capsys.readouterr().out)
    assert [c["name"] for c in cards] == list_models(family="caformer")
    assert cards[0]["params_m"] == model_card(cards[0]["name"]).params_m


def test_info(capsys):
    assert main(["info", "inception_next_tiny", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["counted_params_m"] == pytest.approx(28.06, rel=0.005)
    assert [f["reduction"] for f in info["feature_info"]] == [4, 8, 16, 32]


@pytest.mark.parametrize("argv,needle", [
    (["info", "convnxt_tiny"], "did you mean convnext_tiny"),
    (["list", "nothing_like_this*"], "no model matches"),
])
def test_errors_are_one_line_with_status_2(argv, needle):
    proc = run_cli(*argv)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("convscope: error:") and needle in lines[0]
    assert "Traceback" not in proc.stderr


def test_bad_usage_exits_2():
    proc = run_cli("frobnicate")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def _one_error_line(capsys, needle: str) -> str:
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("convscope") and needle in lines[0], err
    return out


def test_train_out_at_a_dangling_link_is_refused(tmp_path, capsys):
    link = tmp_path / "run"
    link.symlink_to(tmp_path / "gone")
    argv = ["train", "--model", "convnext_atto", "--data", "synthetic", "--epochs", "1", "--out", str(link)]
    assert main(argv) == 2
    assert _one_error_line(capsys, f"argument --out: {link} is a symbolic link to {str(tmp_path / 'gone')!r}, "
                                   "which does not exist") == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"] and not link.exists()


BENCH = ["bench-mixers", "--data", "synthetic", "--mixers", "pooling,sgconv2d", "--limit-train", "32",
         "--limit-eval", "16", "--batch-size", "16", "--repeats", "1", "--threads", "1"]


def test_bench_mixers_out_is_checked_before_training(tmp_path, capsys):
    (tmp_path / "plain.txt").write_text("a file\n")
    assert main([*BENCH, "--out", str(tmp_path / "plain.txt" / "bench")]) == 2
    assert _one_error_line(capsys, "plain.txt is a file, not a directory") == ""   # nothing trained
    assert main([*BENCH, "--mixers", "pooling,nope", "--out", str(tmp_path / "b")]) == 2
    assert _one_error_line(capsys, "no mixer bench variant ['mixer_bench_nope']") == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.txt"]


def test_bench_mixers_keeps_finished_rows_on_ctrl_c_and_resumes(tmp_path, capsys, monkeypatch):
    import convscope.bench.mixers as bench

    save = bench._save_row
    saved = []

    def save_then_interrupt(*args):
        save(*args)
        saved.append(args[1].model)
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "_save_row", save_then_interrupt)
    out = tmp_path / "bench"
    assert main([*BENCH, "--out", str(out)]) == 130
    assert saved == ["mixer_bench_pooling"] and "interrupted" in capsys.readouterr().err
    assert sorted(p.name for p in (out / "rows").iterdir()) == ["mixer_bench_pooling.json",
                                                                 "mixer_bench_pooling.safetensors"]
    first = json.loads((out / "rows" / "mixer_bench_pooling.json").read_text())["row"]
    monkeypatch.setattr(bench, "_save_row", save)
    assert main([*BENCH, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "mixer_bench_pooling: top-1" in text and "not trained again" in text
    assert "mixer_bench_sgconv2d: top-1" in text.split("not trained again")[1]   # trained now
    rows = {r["model"]: r for r in json.loads((out / "mixer_bench.json").read_text())["rows"]}
    assert rows["mixer_bench_pooling"]["top1"] == first["top1"] and rows["mixer_bench_pooling"]["latency_ms"] > 0
    assert (out / "rows" / "mixer_bench_sgconv2d.json").is_file()
    # a rerun with other settings does not mix its rows with these
    assert main([*BENCH, "--epochs", "2", "--out", str(out)]) == 2
    assert _one_error_line(capsys, "was trained with other settings (epochs 1 -> 2)") == ""
