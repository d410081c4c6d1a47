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
