"""The tune-book example, end to end: a base that never saw a collection, fine-tuned to it three ways.

    python benchmarks/tunebook.py                  # trains what is not trained yet, evaluates, writes the table
    python benchmarks/tunebook.py --num_samples 32 # fewer prompts, a quicker look

The collection is O'Neill's 1850 (`oneills1850` of the built-in corpus). Four models are scored on its held-out
tunes (validation split), each by evaluate_checkpoints.py at its final step:

- base:    recipes/tunebook_base.json, the quick recipe on the corpus without the collection (scored on the
           collection with `--data_from`);
- full:    recipes/tunebook_full.json, every weight of the base fine-tuned on the collection;
- lora:    recipes/tunebook_lora.json, LoRA adapters over the base, the same steps;
- scratch: recipes/tunebook_scratch.json, the same model trained from nothing on the collection alone, the same steps.

Rows (bits per character, validity, bars on the meter, the musical measures of the own tunes against the held-out
tunes, the OA of the constrained tunes, the copy share) go to benchmarks/results/tunebook.{json,md}, with the real
held-out tunes' own row (the ceiling) and the machine and minutes of training.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from finetune.evaluation.checkpoints import data_from
from finetune.recipe import cpu_has_native_bf16, read_recipe
from finetune.run_dir import EVAL_FOLDER
from finetune.tables import markdown_table

REPO = Path(__file__).resolve().parent.parent
TUNE_BOOK = "recipes/tunebook_scratch.json"  # its data keys are the tune book's
MODELS = {  # name -> recipe; the base first, since the fine-tunes start from it
    "base": "recipes/tunebook_base.json",
    "full": "recipes/tunebook_full.json",
    "lora": "recipes/tunebook_lora.json",
    "scratch": TUNE_BOOK,
}
COLUMNS = ["model", "train_minutes", "bits_per_char", "validity", "bar_consistency", "overlapped_area",
           "constrained_overlapped_area", "tonic_ending", "repeat_sign", "distinct_bars", "copy_share"]


def cpu_name() -> str:
    """The CPU's model name (Linux), else what platform knows."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)


def score(name: str, recipe: str, eval_flags: list[str]) -> tuple[dict, dict]:
    """(the model's row, the real tunes' row) of its final step, trained first where it is not yet."""
    out = REPO / read_recipe(REPO / recipe)["output_dir"]
    if not (out / "train_results.json").exists():
        run([sys.executable, "run_finetune.py", recipe])
    folder = EVAL_FOLDER
    if name == "base":  # scored on the tune book, which it never saw, in a folder of its own
        eval_flags = [*eval_flags, "--data_from", TUNE_BOOK]
        _, folder = data_from(str(REPO / TUNE_BOOK))
    step = json.loads((out / "trainer_state.json").read_text())["global_step"]
    run([sys.executable, "evaluate_checkpoints.py", str(out), "--steps", str(step), *eval_flags])
    report = json.loads((out / folder / "metrics.json").read_text())
    minutes = json.loads((out / "train_results.json").read_text())["train_runtime"] / 60
    own, constrained = ({r["tunes"]: r for r in report["rows"]}[kind] for kind in ("own", "constrained"))
    row = {c: own[c] for c in COLUMNS[2:] if c in own} | {"constrained_overlapped_area": constrained["overlapped_area"]}
    real = {c: report["reference"][c] for c in COLUMNS[3:] if c in report["reference"]}
    return {"model": name, "train_minutes": round(minutes, 1), **row}, {"model": "real held-out tunes", **real}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_samples", type=int, default=124, help="held-out prompts (the collection has 124)")
    parser.add_argument("--seed", type=int, default=3407, help="sampling seed of every evaluation")
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "results" / "tunebook"),
                        help="where the table goes (.json and .md are added)")
    args = parser.parse_args()
    eval_flags = ["--num_samples", str(args.num_samples), "--seed", str(args.seed)]
    rows, real = [], None
    for name, recipe in MODELS.items():
        row, real = score(name, recipe, eval_flags)
        rows.append(row)
    rows.append(real)
    bf16 = "AVX512-BF16" if cpu_has_native_bf16() else "no native bf16"
    machine = f"{cpu_name()}, {len(os.sched_getaffinity(0))} CPUs, {bf16}"
    results = Path(args.results)
    results.with_suffix(".json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    cells = ([f"{row[c]:.3f}" if isinstance(row.get(c), float) and c != "train_minutes" else row.get(c, "")
              for c in COLUMNS] for row in rows)
    table = markdown_table(COLUMNS, cells)
    results.with_suffix(".md").write_text(table)
    print(table, end="")


if __name__ == "__main__":
    main()
