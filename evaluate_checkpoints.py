"""Evaluate every checkpoint of a run: the numbers (loss, bits per character) and the music its samples make.

    python evaluate_checkpoints.py runs/music_abc_quick
    python evaluate_checkpoints.py runs/music_abc_quick --split test --num_samples 64 --seed 3407

Writes RUN_DIR/eval/: metrics.json, metrics.csv, metrics.md (also printed), metrics.png, and the samples
of every checkpoint and the final model as .abc/.mid files with samples.jsonl. Each checkpoint is sampled
twice from the same prompts and seed, and each set is scored:

- `own`: the model's own tunes (samples/step-N/), what it learnt: nothing masked;
- `constrained`: the same sampling through sample.py's masks (samples/step-N-constrained/): the loop limit
  (`--max_repeats`, LoopLimitLogitsProcessor in finetune/loops.py) and MeterLogitsProcessor
  (finetune/abc/constrain.py), which masks tokens that would break ABC syntax or the meter; `--constrain none`
  skips this kind.

metrics.json holds one row per checkpoint and kind (`"tunes": "own"` or `"constrained"`; the token metrics,
loss to accuracy, are the checkpoint's and the same in both). The `reference` row (`"tunes": "real"`) scores
the held-out real tunes that gave the prompts with the same checkers, so each generated-tune score can be read
against what real music gets. Data, tokenizer and the training-tune index are loaded once for all checkpoints.
"""

from __future__ import annotations

import finetune

finetune.quiet_bitsandbytes()  # before transformers imports bitsandbytes (see its docstring)

import sys

from finetune.abc.check import resolve_checker
from finetune.errors import UserError, run_command
from finetune.evaluation.checkpoints import EvalCommand, data_from, evaluate_run, find_checkpoints, read_run
from finetune.evaluation.report import chosen_steps, parse_steps, write_report
from finetune.generation import SampleArguments
from finetune.recipe import CliParser
from finetune.run_dir import EVAL_FOLDER


def main(argv: list[str]) -> int:
    ########## arguments and the run: everything is checked before anything is loaded
    parser = CliParser(
        (EvalCommand, SampleArguments),
        prog="evaluate_checkpoints.py",
        usage="evaluate_checkpoints.py RUN_DIR [--split validation|test] [--num_samples N] [--seed S] ...",
    )
    parser.add_argument("run_dir", help="the output_dir of a run_finetune.py run")
    # The model's own tunes are always scored; `--constrain meter` (the default) scores constrained ones too.
    parser.set_defaults(num_samples=64)
    command, sample_args, rest = parser.parse_command_line(argv)
    report_steps = parse_steps(command.report_steps)
    data_args, resolved = read_run(rest.run_dir)
    folder = EVAL_FOLDER
    if command.data_from:  # another run's or recipe's held-out tunes, in a folder of their own
        data_args, folder = data_from(command.data_from)
    sample_args = sample_args.settled(resolved.get("sampling"))  # flags, else the recipe's, else the defaults
    checkpoints = find_checkpoints(rest.run_dir)
    if command.steps:
        wanted = parse_steps(command.steps)
        chosen_steps([{"step": c.step} for c in checkpoints], wanted)  # an unknown step fails here, by name
        checkpoints = [c for c in checkpoints if c.step in wanted]
    chosen_steps([{"step": c.step} for c in checkpoints], report_steps)  # a step that will not exist fails now
    try:
        checker = resolve_checker(command.checker)
    except FileNotFoundError as e:
        raise UserError(str(e)) from None

    ########## data, prompts, every checkpoint: Trainer.evaluate, samples and their scores; eval/ written
    evaluate_run(rest.run_dir, checkpoints, command, sample_args, data_args, resolved, checker, folder)
    if command.report:
        print(f"Wrote {write_report(rest.run_dir, report_steps, folder)}")
    return 0


def cli() -> int:
    return run_command(main)


if __name__ == "__main__":
    sys.exit(cli())
