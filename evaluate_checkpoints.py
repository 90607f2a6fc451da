"""Evaluate every checkpoint of a run: the numbers (loss, bits per character) and the music its samples make.

    python evaluate_checkpoints.py runs/music_abc_quick
    python evaluate_checkpoints.py runs/music_abc_quick --split test --num_samples 64 --seed 3407

Writes RUN_DIR/eval/: metrics.json, metrics.csv, metrics.md (also printed), metrics.png, and the samples
of every checkpoint and the final model as .abc/.mid files with samples.jsonl. Each checkpoint is sampled
twice from the same prompts and seed, and each set is scored:

- `own`: the model's own tunes (samples/step-N/), what it learnt: nothing masked;
- `constrained`: the same sampling through sample.py's masks (samples/step-N-constrained/): the loop limit
  (`--max_repeats`, LoopLimitLogitsProcessor in finetune/loops.py) and MetreLogitsProcessor
  (finetune/abc/constrain.py), which masks tokens that would break ABC syntax or the metre; `--constrain none`
  skips this kind.

metrics.json holds one row per checkpoint and kind (`"tunes": "own"` or `"constrained"`; the token metrics,
loss to accuracy, are the checkpoint's and the same in both). The `reference` row (`"tunes": "real"`) scores
the held-out real tunes that gave the prompts with the same checkers, so each generated-tune score can be read
against what real music gets. Data, tokenizer and the training-tune index are loaded once for all checkpoints.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import sys
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import finetune  # noqa: F401  (first: it quiets a bitsandbytes import warning, see finetune/__init__.py)
import datasets
import torch
from tqdm.auto import tqdm
from transformers import Trainer, TrainingArguments, default_data_collator

from finetune.abc.check import check_tunes, resolve_checker, summarize
from finetune.attention import PACKED_SDPA
from finetune.args import DataArguments
from finetune.data import clean_splits, load_raw_splits
from finetune.errors import UserError, run_command
from finetune.metrics import COLUMNS, TokenMetrics, format_cell, load_metric, preprocess_logits_for_metrics
from finetune.model import context_length, has_tokenizer, is_model_dir, load_checkpoint, resolve_block_size
from finetune.packing import tokenize_and_pack
from finetune.recipe import CliParser
from finetune.report import TUNE_KINDS, chosen_steps, parse_steps, samples_folder, write_report
from finetune.run_dir import RECIPE_FILE, complete_checkpoints, global_step, saved_recipe
from finetune.sampling import (
    Sample,
    SampleArguments,
    cut_off_real_tunes,
    generate_tunes,
    prompt_fields,
    prompt_from_tune,
    write_samples,
)

PLOTTED = [name for name in COLUMNS if name not in ("step", "tunes", "perplexity")]
TOKEN_METRICS = ("loss", "bits_per_char", "accuracy")  # the checkpoint's, not its samples'



@dataclass
class EvalCommand:
    split: Literal["validation", "test"] = field(
        default="validation", metadata={"help": "Held-out tunes to score and prompt from (validation keeps the recipe's max_eval_samples)."}
    )
    checker: Literal["auto", "abc2midi", "python"] = field(
        default="auto", metadata={"help": "ABC checker: abc2midi when on PATH, else the strict Python one."}
    )
    per_device_eval_batch_size: int | None = field(default=None, metadata={"help": "Default: the recipe's."})
    report: bool = field(default=False, metadata={"help": "Also write eval/report.html (sheet music, audio, curves)."})
    report_steps: str | None = field(
        default=None, metadata={"help": "Steps whose samples the report shows, comma-separated; default first and last."}
    )
    steps: str | None = field(
        default=None, metadata={"help": "Evaluate only the checkpoints of these steps, comma-separated; default all."}
    )


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: str
    name: str


def find_checkpoints(run_dir: str) -> list[Checkpoint]:
    """Every complete checkpoint-N, then the final model when it is not the same step as the last checkpoint."""
    found = [Checkpoint(global_step(path) or 0, path, os.path.basename(path)) for path in complete_checkpoints(run_dir)]
    final_step = global_step(run_dir)
    if is_model_dir(Path(run_dir)) and final_step not in {c.step for c in found}:
        found.append(Checkpoint(final_step if final_step is not None else -1, run_dir, "final"))
    if not found:
        raise UserError(f"{run_dir} has no checkpoints and no final model yet; train first")
    for checkpoint in found:
        if not has_tokenizer(Path(checkpoint.path)):
            raise UserError(f"{checkpoint.path} has no tokenizer; save the tokenizer with each checkpoint (run_finetune.py does)")
    return sorted(found, key=lambda c: c.step)


def read_run(run_dir: str) -> tuple[DataArguments, dict]:
    """The data arguments the run trained with, and its whole resolved recipe."""
    resolved = saved_recipe(run_dir)
    if resolved is None:
        raise UserError(f"{run_dir} is not a run directory (no {RECIPE_FILE}); pass the output_dir of a run_finetune.py run")
    (data_args,) = CliParser((DataArguments,), prog="", usage="").parse_dict(resolved, allow_extra_keys=True)
    return data_args, resolved


def held_out_tunes(data_args: DataArguments, split: str) -> tuple[datasets.DatasetDict, list[str]]:
    """(the split's tunes, the training tunes' texts), cleaned exactly as training cleaned them."""
    tunes, _ = clean_splits(load_raw_splits(data_args), data_args)
    if split not in tunes or len(tunes[split]) == 0:
        raise UserError(f"dataset '{data_args.dataset_name_or_path}' has no {split} tunes; use --split validation")
    return datasets.DatasetDict({split: tunes[split]}), tunes["train"]["text"]


def token_numbers(model, rows: datasets.Dataset, batch_size: int, token_metrics: TokenMetrics, scratch: str,
                  bf16: bool | None = None) -> dict:
    """Loss, bits per character and accuracy over packed held-out rows (`Trainer.evaluate`, each tune attending to
    itself); bf16 where the GPU has it, full precision on the CPU (where bf16 is emulated); `bf16` overrides that.

    The model comes back ready to sample, on the evaluation's device, with stock SDPA and in its own precision:
    accelerate wraps a mixed-precision model's `forward` in autocast, and left there the wrapper would sample the
    tunes in bf16 on a GPU, unlike sample.py.
    """
    on_gpu = torch.cuda.is_available()
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=scratch,
            per_device_eval_batch_size=batch_size,
            report_to="none",
            use_cpu=not on_gpu,
            bf16=on_gpu and torch.cuda.is_bf16_supported() if bf16 is None else bf16,
        ),
        data_collator=default_data_collator,
        compute_metrics=token_metrics,
        preprocess_logits_for_metrics=preprocess_logits_for_metrics,
    )
    model.set_attn_implementation(PACKED_SDPA)  # packed held-out rows: each tune attends to itself
    numbers = trainer.evaluate(eval_dataset=rows)
    trainer.accelerator.unwrap_model(model, keep_fp32_wrapper=False)  # restores the model's own forward
    model.set_attn_implementation("sdpa")  # generation: stock SDPA, with its KV cache and padding mask
    return numbers


class Scorer:
    """The generation metrics (local `evaluate` modules), loaded once; the training-tune index is built once.

    Validity and bars come from the checker's verdicts, which samples.jsonl keeps too, so that the checker
    (abc2midi: a process per tune) runs once per tune; metrics/abc_validity sums them the same way.
    """

    def __init__(self, training_tunes: list[str]):
        self.training_tunes = training_tunes
        self.adherence = load_metric("header_adherence")
        self.novelty = load_metric("abc_novelty")
        self.loops = load_metric("loops")

    def __call__(self, tunes: list[str], checks: list[dict], prompts: list[str]) -> dict:
        verdicts = summarize(checks)
        return {
            "validity": verdicts["validity"],
            "bar_consistency": verdicts["bar_consistency"],
            **self.adherence.compute(predictions=tunes, references=prompts),
            **self.novelty.compute(predictions=tunes, training_tunes=self.training_tunes),
            "loops": self.loops.compute(predictions=tunes)["loops"],
        }


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(format_cell(name, row.get(name)) for name in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def plot_metrics(rows: list[dict], reference: dict, path: Path) -> None:
    """One panel per metric against step; the reference (real tunes) as a dashed line where it applies."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 4
    fig, axes = plt.subplots(math.ceil(len(PLOTTED) / columns), columns, figsize=(13, 7), sharex=True)
    kinds = [kind for kind in TUNE_KINDS if any(row["tunes"] == kind for row in rows)]
    for ax, name in zip(axes.flat, PLOTTED):
        for kind in kinds[:1] if name in TOKEN_METRICS else kinds:
            chosen = [row for row in rows if row["tunes"] == kind]
            label = None if name in TOKEN_METRICS else f"{kind} tunes"
            ax.plot([row["step"] for row in chosen], [row.get(name, float("nan")) for row in chosen], marker="o", label=label)
        if reference.get(name) is not None:
            ax.axhline(reference[name], color="tab:green", linestyle="--", label="real tunes")
        if name not in TOKEN_METRICS:
            ax.legend(fontsize=7)
        ax.set_title(name.replace("_", " "), fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(PLOTTED):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("optimizer step")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_results(out: Path, rows: list[dict], reference: dict, settings: dict) -> str:
    table = markdown_table([*rows, {**reference, "step": "reference"}])
    _write(out / "metrics.json", json.dumps({"settings": settings, "rows": rows, "reference": reference}, indent=2) + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["step", "tunes", "checkpoint", *list(COLUMNS)[2:]], extrasaction="ignore")
    writer.writeheader()
    writer.writerows([*rows, {**reference, "step": "reference", "checkpoint": "real tunes"}])
    _write(out / "metrics.csv", buffer.getvalue())
    _write(out / "metrics.md", table)
    plot_metrics(rows, reference, out / "metrics.png")
    return table


def main(argv: list[str]) -> int:
    ########## arguments and the run: everything is checked before anything is loaded
    parser = CliParser(
        (EvalCommand, SampleArguments),
        prog="evaluate_checkpoints.py",
        usage="evaluate_checkpoints.py RUN_DIR [--split validation|test] [--num_samples N] [--seed S] ...",
    )
    parser.add_argument("run_dir", help="the output_dir of a run_finetune.py run")
    # The model's own tunes are always scored; `--constrain metre` (the default) scores constrained ones too.
    parser.set_defaults(num_samples=64)
    command, sample_args, rest = parser.parse_command_line(argv)
    report_steps = parse_steps(command.report_steps)
    data_args, resolved = read_run(rest.run_dir)
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

    ########## data, prompts and the reference row (real tunes), once for all checkpoints
    held_out, training_tunes = held_out_tunes(data_args, command.split)
    texts = held_out[command.split]["text"]
    chosen = random.Random(sample_args.seed).sample(range(len(texts)), min(sample_args.num_samples, len(texts)))
    real = [texts[i] for i in chosen]
    fields = prompt_fields(data_args.keep_fields)
    prompts = [prompt_from_tune(tune, fields) for tune in real]
    score = Scorer(training_tunes)
    real_checks = check_tunes(real, checker)
    reference = {"checkpoint": "real tunes", "tunes": "real", **score(real, real_checks, prompts)}
    tokenizer = None
    out = Path(rest.run_dir) / "eval"
    out.mkdir(exist_ok=True)
    references = [Sample(prompt=p, text=t, ended=True, new_tokens=0) for p, t in zip(prompts, real)]
    write_samples(references, out / "samples" / "reference", label="real tune", checks=real_checks)
    kinds = {"own": replace(sample_args, constrain="none", max_repeats=0)}  # nothing masked: what the model learnt
    if sample_args.constrain == "metre":
        kinds["constrained"] = sample_args

    ########## every checkpoint: Trainer.evaluate over packed held-out rows, then samples and their scores
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for checkpoint in tqdm(checkpoints, desc="checkpoints", unit="ckpt"):
            model, checkpoint_tokenizer = load_checkpoint(checkpoint.path)
            if tokenizer is None:
                tokenizer = checkpoint_tokenizer
                block_size = resolve_block_size(data_args.max_seq_length, model.config)
                packed, _ = tokenize_and_pack(held_out, tokenizer, block_size, data_args, splits=(command.split,))
                token_metrics = TokenMetrics(tokenizer)
                # the real tunes' truncation: those the budget a sample gets would cut off too
                cut = cut_off_real_tunes(tokenizer, context_length(model.config), prompts, real, sample_args)
                reference["truncation"] = sum(cut) / len(cut)
            batch_size = command.per_device_eval_batch_size or resolved.get("per_device_eval_batch_size", 8)
            numbers = token_numbers(model, packed[command.split], batch_size, token_metrics, scratch)
            for kind, kind_args in kinds.items():
                samples = generate_tunes(model, tokenizer, prompts, kind_args)
                tunes = [s.text for s in samples]
                checks = check_tunes(tunes, checker)
                label = f"step {checkpoint.step}" + (f" {kind}" if kind != "own" else "")
                write_samples(samples, out / "samples" / samples_folder(checkpoint.step, kind), label=label, checks=checks)
                rows.append(
                    {
                        "step": checkpoint.step,
                        "tunes": kind,
                        "checkpoint": checkpoint.name,
                        "loss": numbers["eval_loss"],
                        "perplexity": math.exp(numbers["eval_loss"]),
                        "bits_per_char": numbers["eval_bits_per_char"],
                        "accuracy": numbers["eval_accuracy"],
                        **score(tunes, checks, prompts),
                        "truncation": sum(not s.ended for s in samples) / len(samples),
                    }
                )
            del model

    settings = {
        "run_dir": rest.run_dir,
        "split": command.split,
        "checker": checker,
        "prompt_fields": fields,
        "prompts": len(prompts),
        "sampling": asdict(sample_args),
        "tunes": {kind: TUNE_KINDS[kind] for kind in kinds},
        "reference": f"the {len(real)} {command.split} tunes whose headers are the prompts",
    }
    table = write_results(out, rows, reference, settings)
    print(table, end="")
    folders = ", ".join(samples_folder("N", kind) + "/" for kind in kinds)
    print(f"Wrote {out}/metrics.{{json,csv,md,png}} and samples/{{{folders}}} ({checker} checker, {command.split} split)")
    if command.report:
        print(f"Wrote {write_report(rest.run_dir, report_steps)}")
    return 0


def cli() -> int:
    return run_command(main)


if __name__ == "__main__":
    sys.exit(cli())
