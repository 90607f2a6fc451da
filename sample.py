"""Sample tunes from a checkpoint: prints them and writes .abc and .mid files.

    python sample.py runs/music_abc_quick --prompt "M:6/8\\nL:1/8\\nK:D" --num_samples 4
    python sample.py runs/music_abc_quick/checkpoint-150 --temperature 1.0 --top_k 0 --top_p 0.9 --out tunes/

Sampling settings not given as flags are the run's recipe's (its "sampling" key), else the field's settings for
character-level ABC models (finetune/sampling.py says whose).
Without --prompt every tune starts from the bare start-of-tune token, so the model picks its own header.
"""

from __future__ import annotations

import finetune

finetune.quiet_bitsandbytes()  # before transformers imports bitsandbytes (see its docstring)

import sys
from dataclasses import dataclass, field
from pathlib import Path

from accelerate import PartialState

from finetune.abc.check import check_tunes
from finetune.args import SAMPLING_DEFAULTS, sampling_text
from finetune.errors import UserError, run_command
from finetune.evaluation.checkpoints import training_typicality
from finetune.generation import SampleArguments, generate_tunes, parse_prompt, write_samples
from finetune.model import load_checkpoint
from finetune.recipe import CliParser
from finetune.run_dir import run_recipe


@dataclass
class SampleCommand:
    prompt: str = field(default="", metadata={"help": 'Header to continue, e.g. "M:6/8\\nL:1/8\\nK:D" (\\n: new line).'})
    out: str | None = field(default=None, metadata={"help": "Folder for the .abc/.mid files; default CHECKPOINT/samples."})


def main(argv: list[str]) -> int:
    parser = CliParser((SampleCommand, SampleArguments), prog="sample.py", usage="sample.py CHECKPOINT [--prompt ...] [--num_samples N] ...")
    parser.add_argument("checkpoint", help="a checkpoint folder or a run's output_dir (its final model)")
    command, sample_args, rest = parser.parse_command_line(argv)
    recipe = run_recipe(rest.checkpoint) or {}
    sample_args = sample_args.settled(recipe.get("sampling"))  # flags, else the run's recipe's, else the defaults
    model, tokenizer = load_checkpoint(rest.checkpoint)
    model.to(PartialState().device)  # the GPU where there is one (accelerate's choice of device, as Trainer's)
    prompts = [parse_prompt(command.prompt)] * sample_args.num_samples
    typical = None  # best of n also ranks by nearness to the run's training tunes, where they can be read
    if sample_args.best_of > 1 and recipe:
        try:
            typical = training_typicality(recipe)
        except UserError as e:
            print(f"note: best of {sample_args.best_of} ranks without nearness to the training tunes: {e}", file=sys.stderr)
    samples = generate_tunes(model, tokenizer, prompts, sample_args, typical)
    out = Path(command.out) if command.out else Path(rest.checkpoint) / "samples"
    checks = check_tunes([s.text for s in samples])
    records = write_samples(samples, out, label=Path(rest.checkpoint).name, checks=checks)
    for record, check in zip(records, checks):
        verdict = "valid" if check["valid"] else f"{len(check['errors'])} problem(s): {check['errors'][0]}"
        ending = "" if record["ended"] else ", truncated"
        print(f"--- {out / record['abc']} ({check['checker']}: {verdict}{ending})")
        print(record["text"].rstrip())
    settings = sampling_text({k: getattr(sample_args, k) for k in SAMPLING_DEFAULTS})
    settings += f", best of {sample_args.best_of}" if sample_args.best_of > 1 else ""
    print(f"Wrote {len(records)} tunes to {out} (.abc, .mid of those that play, samples.jsonl); sampled at {settings}")
    return 0


def cli() -> int:
    return run_command(main)


if __name__ == "__main__":
    sys.exit(cli())
