"""The sweep that chose recipes/music_abc_cpu.json: short runs of its variants, each scored on its tunes.

    python benchmarks/cpu_recipe_sweep.py                 # every variant (~15 min each on 2 cores)
    python benchmarks/cpu_recipe_sweep.py --only lr2e-3   # one of them

Every variant trains `--steps` optimizer steps of the recipe with a few keys overridden (VARIANTS), then
evaluate_checkpoints.py scores its final model: bits per character, and validity and bars on the meter of 64
held-out prompts' tunes, the model's own and constrained. Rows are appended to
benchmarks/results/cpu-recipe-sweep.{json,md} with the machine and the wall time of training.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

from finetune.run_dir import EVAL_FOLDER
from finetune.tables import markdown_table

REPO = Path(__file__).resolve().parent.parent
RECIPE = "recipes/music_abc_cpu.json"
# The recipes before this one. Until 2026-12-06: fp32 with no loop penalty, sampled at the field's temperature 1.2
# (FP32_NO_PENALTY), 4k tokens a step for 4000 steps; before that 16k tokens a step for 1000 steps (the variants
# named "16k, ..." were measured over it) and, on 2026-11-27, 8k tokens a step for 2000.
AT_1_2 = ["--sampling", '{"temperature": 1.2}']
FP32_NO_PENALTY = ["--bf16", "false", "--loop_penalty", "0", *AT_1_2]
SIXTEEN_K = FP32_NO_PENALTY + ["--gradient_accumulation_steps", "4", "--warmup_steps", "50"]
EIGHT_K = FP32_NO_PENALTY + ["--gradient_accumulation_steps", "2", "--warmup_steps", "100"]
# name -> flags over the recipe. The first is the recipe as it stands.
VARIANTS = {
    "recipe": [],
    "recipe, temperature 1.2": AT_1_2,  # the same model (trained again), sampled at the field's defaults
    "fp32, no loop penalty": FP32_NO_PENALTY,
    "balance_meters 150": FP32_NO_PENALTY + ["--balance_meters", "150"],
    "8k tokens a step": EIGHT_K,
    "16k tokens a step": SIXTEEN_K,
    "16k, lr2e-3": SIXTEEN_K + ["--learning_rate", "2e-3"],
    "16k, lr5e-4": SIXTEEN_K + ["--learning_rate", "5e-4"],
    "16k, narrow-deep (192x6)": SIXTEEN_K + ["--model_config", '{"hidden_size": 192, "intermediate_size": 512, "num_hidden_layers": 6, "num_attention_heads": 4, "num_key_value_heads": 4}'],
    "16k, wide (384x4)": SIXTEEN_K + ["--model_config", '{"hidden_size": 384, "intermediate_size": 1024, "num_hidden_layers": 4, "num_attention_heads": 6, "num_key_value_heads": 6}'],
    "16k, transpose +-1,2": SIXTEEN_K + ["--transpose_train", "-2", "-1", "1", "2"],
    "16k, train_tunes meter": SIXTEEN_K + ["--train_tunes", "meter"],
    "16k, bf16": SIXTEEN_K + ["--bf16", "true"],
    "16k, bpe 512": SIXTEEN_K + ["--tokenizer_merges", "512"],
    "16k, bpe 1024": SIXTEEN_K + ["--tokenizer_merges", "1024"],
    "16k, bpe 2048": SIXTEEN_K + ["--tokenizer_merges", "2048"],
    "16k, bpe 1024, transpose +-1,2": SIXTEEN_K + ["--tokenizer_merges", "1024", "--transpose_train", "-2", "-1", "1", "2"],
    "16k, balance_meters 150": SIXTEEN_K + ["--balance_meters", "150"],
}
COLUMNS = ["variant", "steps", "train_minutes", "bits_per_char", "own_validity", "own_bars", "constrained_validity", "constrained_bars"]


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)


def sweep_one(name: str, flags: list[str], steps: int, out_root: Path, recipe: str, eval_flags: list[str]) -> dict:
    out = out_root / "".join(c if c.isalnum() or c in "-." else "_" for c in name)
    if not (out / "train_results.json").exists():  # a trained variant is only evaluated again
        run([sys.executable, "run_finetune.py", recipe, *flags, "--max_steps", str(steps), "--output_dir", str(out),
             "--eval_strategy", "no", "--save_strategy", "no", "--logging_steps", "25"])
    minutes = json.loads((out / "train_results.json").read_text())["train_runtime"] / 60
    run([sys.executable, "evaluate_checkpoints.py", str(out), *eval_flags])
    rows = json.loads((out / EVAL_FOLDER / "metrics.json").read_text())["rows"]
    own, constrained = (next(r for r in reversed(rows) if r["tunes"] == tunes) for tunes in ("own", "constrained"))
    return {
        "variant": name, "flags": flags, "steps": steps, "train_minutes": round(minutes, 1),
        "bits_per_char": own["bits_per_char"],
        "own_validity": own["validity"], "own_bars": own["bar_consistency"],
        "constrained_validity": constrained["validity"], "constrained_bars": constrained["bar_consistency"],
        "machine": f"{platform.node()}, {len(__import__('os').sched_getaffinity(0))} CPUs",
    }


def write(rows: list[dict], path: Path) -> None:
    path.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    cells = ([f"{row[c]:.3f}" if isinstance(row[c], float) and c != "train_minutes" else row[c] for c in COLUMNS] for row in rows)
    path.with_suffix(".md").write_text(markdown_table(COLUMNS, cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", choices=list(VARIANTS), help="run only these variants")
    parser.add_argument("--steps", type=int, default=240, help="optimizer steps per variant")
    parser.add_argument("--out", default="runs/sweep", help="folder for the variants' runs")
    parser.add_argument("--recipe", default=RECIPE, help="the recipe the variants change")
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "results" / "cpu-recipe-sweep"),
                        help="where the table goes (.json and .md are added)")
    parser.add_argument("--num_samples", type=int, default=64, help="held-out prompts each variant's tunes answer")
    args = parser.parse_args()
    results = Path(args.results)
    rows = json.loads(results.with_suffix(".json").read_text()) if results.with_suffix(".json").exists() else []
    for name in args.only or list(VARIANTS):
        row = sweep_one(name, VARIANTS[name], args.steps, REPO / args.out, args.recipe, ["--num_samples", str(args.num_samples)])
        rows = [r for r in rows if not (r["variant"] == name and r["steps"] == row["steps"])] + [row]
        write(rows, results)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
