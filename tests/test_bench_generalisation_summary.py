"""The generalisation benchmark's summary logic: pooling over training seeds and the spread it reports."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_generalisation.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_generalisation", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(model: str, per_seed: dict[int, list[float]], train="A", test="B") -> list[dict]:
    return [{"train_gen": train, "test_gen": test, "seed": seed, "model": model, "name": f"img{i}-rib",
             "anatomy": "rib", "dice": d, "hd95_mm": 0.4, "assd_mm": 0.1}
            for seed, dices in per_seed.items() for i, d in enumerate(dices)]


def test_seeds_are_pooled_and_their_spread_is_shown(bench):
    rows = _rows("sam2rad_auto", {0: [0.80, 0.82], 1: [0.84, 0.86]}) + _rows("unet", {0: [0.83, 0.83], 1: [0.85, 0.85]})
    summary = {s["model"]: s for s in bench.summarise(rows)}
    s = summary["sam2rad_auto"]
    assert s["n"] == 4 and s["dice_mean"] == pytest.approx(0.83)
    assert s["seed_dice_means"] == pytest.approx([0.81, 0.85])
    table = bench.format_table(list(summary.values()))
    assert "0.810-0.850" in table and "0.830-0.850" in table
    verdict = " ".join(bench.verdicts(list(summary.values())))
    assert "the U-Net is ahead on Dice by 0.010" in verdict and "ranges overlap" in verdict


def test_separate_seed_ranges_are_called_so(bench):
    rows = _rows("sam2rad_auto", {0: [0.70], 1: [0.72]}) + _rows("unet", {0: [0.80], 1: [0.81]})
    verdict = " ".join(bench.verdicts(bench.summarise(rows)))
    assert "do not overlap" in verdict and "misses the issue's bar" in verdict


def test_one_seed_shows_no_range_and_no_spread_sentence(bench):
    rows = _rows("sam2rad_auto", {0: [0.91, 0.93]}) + _rows("unet", {0: [0.90, 0.90]})
    summary = bench.summarise(rows)
    assert [bench._seed_range(s) for s in summary] == ["-", "-"]
    verdict = " ".join(bench.verdicts(summary))
    assert "Per-seed" not in verdict and "Sam2Rad auto is ahead on Dice" in verdict


def test_a_model_that_misses_most_images_gets_no_distance_margin(bench):
    rows = _rows("sam2rad_auto", {0: [0.8, 0.8]}) + _rows("unet", {0: [0.0, 0.0]})
    for r in rows:
        r["hd95_mm"] = float("inf") if r["model"] == "unet" else 0.3
    verdict = " ".join(bench.verdicts(bench.summarise(rows)))
    assert "0.30 vs inf mm (inf: most masks empty)" in verdict and "by inf" not in verdict


def test_flip_rows_are_compared_with_the_other_models_flip_row(bench):
    rows = (_rows("sam2rad_auto", {0: [0.75]}) + _rows("sam2rad_auto_flip", {0: [0.77]})
            + _rows("unet", {0: [0.76]}) + _rows("unet_flip", {0: [0.79]}))
    verdict = bench.verdicts(bench.summarise(rows))
    plain = next(v for v in verdict if "Sam2Rad auto is" in v or "Sam2Rad auto misses" in v or "(0.750 vs" in v)
    flip = next(v for v in verdict if "with the flip" in v.split(";")[0] or "0.770 vs" in v)
    assert "(0.750 vs 0.760)" in plain and "the U-Net is ahead on Dice by 0.010" in plain
    assert "(0.770 vs 0.790)" in flip and "the U-Net with the flip is ahead on Dice by 0.020" in flip


def test_merge_pools_runs_and_refuses_a_seed_twice(bench, tmp_path):
    a, b = tmp_path / "s0", tmp_path / "s1"
    bench.write_outputs(a, _rows("sam2rad_auto", {0: [0.80]}) + _rows("unet", {0: [0.82]}), {})
    bench.write_outputs(b, _rows("sam2rad_auto", {1: [0.84]}) + _rows("unet", {1: [0.86]}), {})
    text = bench.merge_runs([a, b], tmp_path / "pooled")
    assert "0.800-0.840" in text and "0.820-0.860" in text and (tmp_path / "pooled" / "table.txt").is_file()
    with pytest.raises(SystemExit, match="seed 0 is in both"):
        bench.merge_runs([a, a], tmp_path / "again")
