"""Evaluate every checkpoint of a run: `Trainer.evaluate` over the held-out tunes, then the tunes each checkpoint
samples, own and constrained, scored beside the real tunes that gave their prompts. evaluate_checkpoints.py is its
command; this module is the work, importable by tests and benchmarks.
"""

from __future__ import annotations

import math
import os
import random
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import datasets
import torch
from tqdm.auto import tqdm
from transformers import Trainer, TrainingArguments, default_data_collator

from ..abc.check import check_tunes, summarize
from ..abc.measures import Typicality, compare_measured, set_measures
from ..args import DataArguments
from ..attention import PACKED_SDPA
from ..data import clean_splits, load_raw_splits
from ..errors import UserError
from ..generation import (
    Sample,
    SampleArguments,
    cut_off_real_tunes,
    generate_tunes,
    prompt_fields,
    prompt_from_tune,
    write_samples,
)
from ..model import context_length, has_tokenizer, is_model_dir, load_checkpoint, resolve_block_size
from ..model_card import add_evaluation
from ..packing import tokenize_and_pack
from ..recipe import CliParser, read_data_args
from ..run_dir import EVAL_FOLDER, RECIPE_FILE, complete_checkpoints, global_step, saved_recipe
from .report import samples_folder
from .results import MUSIC_COLUMNS, TUNE_KINDS, write_results
from .token_metrics import TokenMetrics, load_metric, preprocess_logits_for_metrics

# The held-out real tunes the musical measures set every set of tunes against, and where their ceiling comes from.
MUSIC_REFERENCE_TUNES = 200
OTHER_SPLIT = {"validation": "test", "test": "validation"}


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
    data_from: str | None = field(
        default=None,
        metadata={
            "help": "Score against the held-out tunes of another run's or recipe's data (a run folder or a recipe "
            ".json): e.g. a base run on the tune book its fine-tunes learnt. Results go to RUN_DIR/eval-NAME/ "
            "(NAME: that run's or recipe's name) and the model card is left as it is. Default: the run's own data."
        },
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


def recipe_data_args(recipe: dict) -> DataArguments:
    """The data arguments of a run's resolved `recipe` (its other keys are not read)."""
    (data_args,) = CliParser((DataArguments,), prog="", usage="").parse_dict(recipe, allow_extra_keys=True)
    return data_args


def training_tunes(data_args: DataArguments) -> list[str]:
    """The training tunes' texts of `data_args`, cleaned as training cleaned them."""
    tunes, _ = clean_splits(load_raw_splits(data_args), data_args)
    return tunes["train"]["text"]


def training_typicality(recipe: dict) -> Typicality:
    """The Typicality of the training tunes of a run's resolved `recipe`."""
    return Typicality(training_tunes(recipe_data_args(recipe)))


def read_run(run_dir: str) -> tuple[DataArguments, dict]:
    """The data arguments the run trained with, and its whole resolved recipe."""
    resolved = saved_recipe(run_dir)
    if resolved is None:
        raise UserError(f"{run_dir} is not a run directory (no {RECIPE_FILE}); pass the output_dir of a run_finetune.py run")
    return recipe_data_args(resolved), resolved


def data_from(path: str) -> tuple[DataArguments, str]:
    """The data arguments of a run folder or a recipe file, and the evaluation folder's name for them."""
    where = Path(path)
    if where.is_dir():
        data_args, _ = read_run(path)
    else:
        data_args = read_data_args(where)
    return data_args, f"{EVAL_FOLDER}-{where.resolve().stem}"


def held_out_tunes(data_args: DataArguments, split: str) -> tuple[datasets.DatasetDict, list[str], list[str]]:
    """(the split's tunes, the training tunes' texts, the other held-out split's texts, which may be none), cleaned
    exactly as training cleaned them."""
    tunes, _ = clean_splits(load_raw_splits(data_args), data_args)
    if split not in tunes or len(tunes[split]) == 0:
        raise UserError(f"dataset '{data_args.dataset_name_or_path}' has no {split} tunes; use --split validation")
    other = OTHER_SPLIT[split]
    return datasets.DatasetDict({split: tunes[split]}), tunes["train"]["text"], tunes[other]["text"] if other in tunes else []


@dataclass(frozen=True)
class EvaluationTunes:
    """The real tunes an evaluation samples from and scores against (see evaluation_tunes)."""

    held_out: datasets.DatasetDict  # the split, cleaned as training cleaned it
    training: list[str]  # the training tunes' texts (the copy share's index)
    real: list[str]  # the held-out tunes whose headers are the prompts
    prompts: list[str]
    music_reference: list[str]  # the tunes every set is measured against
    ceiling: list[str]  # real tunes measured against the reference as every generated set is
    ceiling_split: str


def evaluation_tunes(data_args: DataArguments, split: str, sample_args: SampleArguments) -> EvaluationTunes:
    """`sample_args.num_samples` tunes of `split` drawn with its seed, and their headers as prompts. The musical
    measures' reference: the split's other tunes; their ceiling: as many of the other split's (the prompts' own tunes
    where there is no other split) against the same reference."""
    held_out, training, other_split = held_out_tunes(data_args, split)
    texts = held_out[split]["text"]
    rng = random.Random(sample_args.seed)
    chosen = rng.sample(range(len(texts)), min(sample_args.num_samples, len(texts)))
    real = [texts[i] for i in chosen]
    fields = prompt_fields(data_args.keep_fields)
    rest = [texts[i] for i in sorted(set(range(len(texts))) - set(chosen))] or real
    music_reference = rng.sample(rest, min(MUSIC_REFERENCE_TUNES, len(rest)))
    ceiling = rng.sample(other_split, min(len(real), len(other_split))) if other_split else real
    return EvaluationTunes(held_out, training, real, [prompt_from_tune(tune, fields) for tune in real], music_reference,
                           ceiling, OTHER_SPLIT[split] if other_split else split)


def tune_kinds(sample_args: SampleArguments) -> dict[str, SampleArguments]:
    """The kinds of tunes an evaluation samples (TUNE_KINDS): always the model's own, with nothing masked (what it
    learnt); constrained ones too where `sample_args.constrain` asks for them."""
    kinds = {"own": replace(sample_args, constrain="none", max_repeats=0)}
    if sample_args.constrain == "meter":
        kinds["constrained"] = sample_args
    return kinds


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
    (abc2midi: a process per tune) runs once per tune; modules/abc_validity sums them the same way. The musical
    measures (finetune.abc.measures) set every set of tunes against the same held-out real tunes, `music_reference`.
    """

    def __init__(self, training_tunes: list[str], music_reference: list[str]):
        self.training_tunes = training_tunes
        self.music_reference = set_measures(music_reference)  # measured once for every set set against it
        self.adherence = load_metric("header_adherence")
        self.novelty = load_metric("abc_novelty")
        self.loops = load_metric("loops")

    def music(self, tunes: list[str]) -> dict:
        """The musical measures of `tunes` against the reference: the table's columns, and all of them as `music`."""
        found = compare_measured(self.music_reference, tunes)
        return {
            "overlapped_area": found["overlapped_area"],
            **{name: found["generated"][name] for name in MUSIC_COLUMNS},
            "music": {"distribution": found["distribution"], "form_and_tonality": found["generated"],
                      "histograms": found["histograms"]["generated"]},
        }

    def __call__(self, tunes: list[str], checks: list[dict], prompts: list[str]) -> dict:
        verdicts = summarize(checks)
        return {
            "validity": verdicts["validity"],
            "bar_consistency": verdicts["bar_consistency"],
            **self.adherence.compute(predictions=tunes, references=prompts),
            **self.novelty.compute(predictions=tunes, training_tunes=self.training_tunes),
            "loops": self.loops.compute(predictions=tunes)["loops"],
        }


def evaluate_run(run_dir: str, checkpoints: list[Checkpoint], command: EvalCommand, sample_args: SampleArguments,
                 data_args: DataArguments, resolved: dict, checker: str, folder: str = EVAL_FOLDER) -> None:
    """Score `checkpoints` of the run, write RUN_DIR/`folder`/ and, for the run's own data (`eval`), the evaluation
    into the run's model card."""
    ########## data, prompts and the reference row (real tunes), once for all checkpoints
    drawn = evaluation_tunes(data_args, command.split, sample_args)
    held_out, real, prompts = drawn.held_out, drawn.real, drawn.prompts
    score = Scorer(drawn.training, drawn.music_reference)
    real_checks = check_tunes(real, checker)
    reference = {"checkpoint": "real tunes", "tunes": "real", **score(real, real_checks, prompts),
                 **score.music(drawn.ceiling)}
    tokenizer = None
    out = Path(run_dir) / folder
    out.mkdir(exist_ok=True)
    references = [Sample(prompt=p, text=t, ended=True, new_tokens=0) for p, t in zip(prompts, real)]
    write_samples(references, out / "samples" / "reference", label="real tune", checks=real_checks)
    kinds = tune_kinds(sample_args)
    typical = Typicality(drawn.training) if sample_args.best_of > 1 else None  # what best of n ranks nearest

    ########## every checkpoint: Trainer.evaluate over packed held-out rows, then samples and their scores
    rows, last_own_tune = [], None
    with tempfile.TemporaryDirectory() as scratch:
        for checkpoint in tqdm(checkpoints, desc="checkpoints", unit="ckpt"):
            model, checkpoint_tokenizer = load_checkpoint(checkpoint.path)
            if tokenizer is None:
                tokenizer = checkpoint_tokenizer
                block_size = resolve_block_size(data_args.max_seq_length, model.config, trained=True)
                packed, _ = tokenize_and_pack(held_out, tokenizer, block_size, data_args, splits=(command.split,))
                token_metrics = TokenMetrics(tokenizer)
                # the real tunes' truncation: those the budget a sample gets would cut off too
                cut = cut_off_real_tunes(tokenizer, context_length(model.config), prompts, real, sample_args)
                reference["truncation"] = sum(cut) / len(cut)
            batch_size = command.per_device_eval_batch_size or resolved.get("per_device_eval_batch_size", 8)
            numbers = token_numbers(model, packed[command.split], batch_size, token_metrics, scratch)
            for kind, kind_args in kinds.items():
                samples = generate_tunes(model, tokenizer, prompts, kind_args, typical)
                tunes = [s.text for s in samples]
                if kind == "own":
                    last_own_tune = tunes[0]
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
                        **score.music(tunes),
                        "truncation": sum(not s.ended for s in samples) / len(samples),
                    }
                )
            del model

    settings = {
        "run_dir": run_dir,
        "split": command.split,
        "checker": checker,
        "prompt_fields": prompt_fields(data_args.keep_fields),
        "prompts": len(prompts),
        "sampling": asdict(sample_args),
        "tunes": {kind: TUNE_KINDS[kind] for kind in kinds},
        "reference": f"the {len(real)} {command.split} tunes whose headers are the prompts",
        "music_reference": f"{len(drawn.music_reference)} other {command.split} tunes; the real row's musical measures "
                           f"are those of {len(drawn.ceiling)} {drawn.ceiling_split} tunes against them (the ceiling)",
    }
    table = write_results(out, rows, reference, settings)
    if folder == EVAL_FOLDER:
        add_evaluation(run_dir, rows, reference, last_own_tune, settings)
    folders = ", ".join(samples_folder("N", kind) + "/" for kind in kinds)
    print(table, end="")
    print(f"Wrote {out}/metrics.{{json,csv,md,png}} and samples/{{{folders}}} ({checker} checker, {command.split} split)")
