"""`sam2rad train` end to end on two tiny images: the plan and the schedule it settled on are printed,
and the card records the length and rate used (both follow the start unless given)."""
from __future__ import annotations

import json

from typer.testing import CliRunner

from flows.cli import app
from sam2rad.init_weights import FINE_TUNE_EPOCHS, FINE_TUNE_LR


def test_train_says_and_records_the_schedule_it_chose(tmp_path):
    out = tmp_path / "m.safetensors"
    # A given length is kept; the rate is the one the shipped start calls for (the default length's
    # own choice by the start is checked in test_init_weights, without training 70 epochs).
    res = CliRunner().invoke(app, ["train", "--data", "synthetic:2:0", "--epochs", "1", "--augment-copies", "1",
                                   "--threads", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "1 epochs (synthetic" in res.output and "all 2 images train on a fixed schedule" in res.output
    assert f"learning rate {FINE_TUNE_LR:g}" in res.output
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["training"]["config"]["epochs"] == 1 and card["training"]["config"]["lr"] == FINE_TUNE_LR


def test_train_help_says_how_the_default_length_is_chosen():
    res = CliRunner().invoke(app, ["train", "--help"], terminal_width=200)
    assert res.exit_code == 0
    assert f"Default: {FINE_TUNE_EPOCHS} when training starts from trained weights" in " ".join(res.output.split())
