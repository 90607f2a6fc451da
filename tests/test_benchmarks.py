"""The benchmark harness runs end to end on a tiny model and writes every figure with its baseline.

Slow (2.5 minutes on a 2-core CPU): they test the benchmark tools, not what a run does, so `pytest -m slow` runs
them (CI does), and the default suite leaves them out.
"""

import json
import math
import subprocess
import sys

import pytest
from conftest import REPO, TINY_RECIPE

pytestmark = pytest.mark.slow

EXPECTED = [
    "peak matmul fp32", "peak matmul bf16", "tiny: train tokens/s, ours vs run_clm",
    "tiny: train tokens/s, ours vs dense-mask packing", "tiny: train tokens/s, loop penalty 0.1 vs none",
    "tiny: attention share of a step, ours vs dense mask",
    "tiny: MFU (of measured peak, same precision)", "padding share, packed vs pad-to-longest",
    "optimizer state, adamw_8bit vs adamw_torch", "peak RSS of a 3-step run, adamw_8bit vs adamw_torch",
    "data prepare+tokenize+pack, warm vs cold", "eval tokens/s vs train tokens/s",
    "eval tokens/s, ours vs dense-mask packing", "generate 128 tokens, KV cache vs none",
    "sample tunes, constrained (--constrain meter) vs own", "sample tunes, constrained vs own: generate steps/s",
    "sample tunes, own: generate steps/s, loop limit vs none",
    "validation bits per character after training",
]


def test_benchmark_harness_writes_every_measurement(tmp_path):
    out = tmp_path / "results.json"
    subprocess.run(
        [sys.executable, "benchmarks/run.py", "--quick", "--recipe", str(TINY_RECIPE), "--steps", "3", "--out", str(out)],
        cwd=REPO, check=True, capture_output=True,
    )
    results = {r["name"]: r for r in json.loads(out.read_text())["results"]}
    assert list(results) == EXPECTED
    for name, record in results.items():
        # A share is 1 - (a step without attention) / (the step): below 1 for any positive timings, while noise on
        # a tiny model (another process on the 2 cores) can take it far below 0.
        assert (-math.inf < record["value"] < 1 if "share of a step" in name else record["value"] > 0), name
        assert {"unit", "baseline", "ratio", "settings"} <= record.keys()
        if record["baseline"]:
            assert abs(record["ratio"] - record["value"] / record["baseline"]) < 1e-9
    # 8-bit optimizer state is smaller than 32-bit state on any model with a large enough tensor.
    assert results["optimizer state, adamw_8bit vs adamw_torch"]["ratio"] < 1


def test_data_scale_benchmark_measures_a_real_dry_run(tmp_path):
    """The data-at-scale section builds distinct synthetic tunes, runs real dry runs and reads their memory."""
    out = tmp_path / "scale.json"
    subprocess.run(
        [sys.executable, "benchmarks/run.py", "--data-scale", "1000,3000", "--out", str(out)],  # the quick recipe
        cwd=REPO, check=True, capture_output=True,
    )
    results = {r["name"]: r for r in json.loads(out.read_text())["results"]}
    assert len(results) == 4
    memory = results["dry run over 3000 tunes: peak memory vs 1000"]
    assert 100 < memory["baseline"] <= memory["value"] < 8000  # MiB: a Python process with torch, and no more
    # All 3000 tunes survive deduplication: the plan's tokens are three times the 1000-tune run's.
    rate = results["dry run over 3000 tunes: preparation tokens/s"]
    assert rate["value"] * results["dry run over 3000 tunes: seconds vs 1000"]["value"] > 3000 * 150


def test_cpu_recipe_sweep_trains_evaluates_and_tabulates_a_variant(tmp_path):
    """benchmarks/cpu_recipe_sweep.py: a variant trains, its final model is scored own and constrained, and the
    row lands in the table (here the tiny recipe, 2 steps, 4 prompts; the variant tops up its rare meters)."""
    results = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, "benchmarks/cpu_recipe_sweep.py", "--recipe", str(TINY_RECIPE), "--only", "balance_meters 150", "--steps", "2",
         "--out", str(tmp_path / "runs"), "--results", str(results), "--num_samples", "4"],
        cwd=REPO, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = json.loads(results.with_suffix(".json").read_text())
    assert row["variant"] == "balance_meters 150" and row["steps"] == 2 and row["flags"] == [  # over the recipe as it was then
        "--bf16", "false", "--loop_penalty", "0", "--sampling", '{"temperature": 1.2}', "--balance_meters", "150"
    ]
    evaluation = json.loads((tmp_path / "runs" / "balance_meters_150" / "eval" / "metrics.json").read_text())
    assert evaluation["settings"]["sampling"]["temperature"] == 1.2  # the variant's recipe.json, read by the evaluation
    assert 0 <= row["own_validity"] <= 1 and 0 <= row["constrained_validity"] <= 1
    # bars are NaN where a 2-step model's tunes hold none
    assert all(math.isnan(row[key]) or 0 <= row[key] <= 1 for key in ("own_bars", "constrained_bars"))
    assert "| balance_meters 150 | 2 |" in results.with_suffix(".md").read_text()


def test_best_of_benchmark_ranks_one_sampling_for_each_n(tmp_path):
    """benchmarks/best_of.py: one sampling of 2 candidates per prompt gives best of 1 and of 2, own and
    constrained, beside the real tunes; a whole tune ranks first, so best of 2 cuts off no more than best of 1."""
    run = tmp_path / "run"
    subprocess.run(
        [sys.executable, "run_finetune.py", str(TINY_RECIPE), "--max_steps", "2", "--bf16", "false",
         "--optim", "adamw_torch", "--output_dir", str(run)],
        cwd=REPO, check=True, capture_output=True,
    )
    results = tmp_path / "best-of"
    result = subprocess.run(
        [sys.executable, "benchmarks/best_of.py", str(run), "--split", "validation", "--num_samples", "3",
         "--best_of", "2", "--results", str(results)],
        cwd=REPO, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(results.with_suffix(".json").read_text())
    rows = report["rows"]
    assert [(row["tunes"], row["best_of"]) for row in rows] == [
        ("own", 1), ("own", 2), ("constrained", 1), ("constrained", 2), ("real", "")
    ]
    assert report["step"] == 2 and report["prompts"] == 3
    for one, two in (rows[0:2], rows[2:4]):
        assert two["truncation"] <= one["truncation"] and two["seconds"] >= one["seconds"]
        assert 0 <= two["validity"] <= 1 and 0 <= two["overlapped_area"] <= 1
    assert "| constrained | 2 |" in results.with_suffix(".md").read_text()
