"""Preference-tune a trained run on its own tunes (TRL's DPOTrainer), round after round, from a JSON recipe.

    python prefer.py recipes/preference/music_abc_cpu.json
    python prefer.py recipes/preference/music_abc_cpu.json --rounds 1 --output_dir runs/try_dpo
    python evaluate_checkpoints.py runs/music_abc_cpu_dpo --split test --num_samples 256

Recipe keys are the run to tune, the rounds, prompts and candidates (finetune/preference.py), and `DPOConfig`
fields (TRL's `TrainingArguments`); flags after the recipe override it. Each round samples the model's own tunes on
training prompts, pairs each prompt's best and worst by the project's ranking, and runs DPO on the pairs. The
output_dir is a run folder: its first checkpoint is the run's final model, then one per round.
"""

from __future__ import annotations

import finetune

finetune.quiet_bitsandbytes()  # before transformers imports bitsandbytes (see its docstring)

import sys

from finetune.errors import run_command
from finetune.preference import parse_preference_recipe, prefer


def main(argv: list[str]) -> int:
    preference, dpo, resolved, notes = parse_preference_recipe(argv)
    for note in notes:
        print(f"note: {note}", flush=True)
    out = prefer(preference, dpo, resolved, log=lambda line: print(line, flush=True))
    print(f"Wrote {out}: evaluate it with `python evaluate_checkpoints.py {out}`", flush=True)
    return 0


def cli() -> int:
    return run_command(main)


if __name__ == "__main__":
    sys.exit(cli())
