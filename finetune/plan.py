"""The arithmetic behind a recipe: data sizes, steps, warmup share, batch size, with warnings.

The step counts follow `Trainer` exactly: micro-batches per epoch are the packed rows divided among the
processes, optimizer steps per epoch are those micro-batches divided by gradient accumulation, rounded
up (Trainer's `num_update_steps_per_epoch`), and `max_steps` > 0 overrides epochs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from transformers import TrainingArguments

from .args import SAMPLING_DEFAULTS, DataArguments, ModelArguments, sampling_text


@dataclass
class Plan:
    lines: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    total_steps: int = 0

    def __str__(self) -> str:
        return "\n".join(["Run plan", *self.lines, *(f"  WARNING: {w}" for w in self.warnings)])


def steps_per_epoch(rows: int, training_args: TrainingArguments) -> tuple[int, int]:
    """(micro-batches per process per epoch, optimizer steps per epoch), as Trainer counts them."""
    batch = training_args.per_device_train_batch_size * training_args.world_size
    micro = math.ceil(rows / batch) if not training_args.dataloader_drop_last else rows // batch
    ga = training_args.gradient_accumulation_steps
    return micro, max(micro // ga + int(micro % ga > 0), 1)


def warmup_steps(training_args: TrainingArguments, total_steps: int) -> int:
    """`warmup_steps` below 1 is a ratio of the total, as TrainingArguments reads it."""
    w = training_args.warmup_steps
    return math.ceil(w * total_steps) if 0 < w < 1 else int(w)


def _count(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(int(n))


def _every(steps: float, total: int) -> int:
    return math.ceil(steps * total) if 0 < steps < 1 else int(steps)


def _add_stream_estimate(plan: Plan, split: str, s: dict, block_size: int) -> None:
    plan.lines.append(
        f"  {split:<16} streamed; ESTIMATED from its first {s['estimated_from']} tunes: {s['tokens_per_tune']:.0f} "
        f"tokens and {s['chars_per_tune']:.0f} chars a tune, {s['overlong_share']:.1%} over {block_size} tokens, "
        f"{s['padding_share']:.1%} padding"
    )
    if s["tunes_with_unknown_chars"]:
        plan.warnings.append(
            f"{s['tunes_with_unknown_chars']} of the first {s['estimated_from']} {split} tunes have characters the tokenizer maps to <unk>"
        )


def make_plan(
    model_args: ModelArguments,
    data_args: DataArguments,
    training_args: TrainingArguments,
    data_stats: dict,
    parameters: tuple[int, int],
    block_size: int,
    notes: list[str],
    description: str = "",
) -> Plan:
    plan = Plan()
    add = plan.lines.append
    if description:
        add(f"  recipe           {description}")
    model = model_args.model_name_or_path or f"new {model_args.model_config.get('model_type')} from model_config"
    total, trainable = parameters
    adapters = f", {_count(trainable)} trainable in LoRA r={model_args.lora_r} adapters" if model_args.use_peft else ""
    base = " (4-bit NF4 base)" if model_args.load_in_4bit else ""
    add(f"  model            {model}{base}: {_count(total)} parameters{adapters}")
    chosen = "".join(
        f" {word} {', '.join(names)}" for word, names in (("only", data_args.sources), ("without", data_args.exclude_sources))
        if names
    )
    add(f"  data             {data_args.dataset_name_or_path}{chosen}; rows of {block_size} tokens (max_seq_length)")
    for split, s in data_stats.items():
        if "estimated_from" in s:
            _add_stream_estimate(plan, split, s, block_size)
            continue
        add(
            f"  {split:<16} {s['tunes']} tunes, {_count(s['tokens'])} tokens, {_count(s['chars'])} chars -> "
            f"{s['rows']} packed rows, {s['padding_share']:.1%} padding"
        )
        if s["overlong_tunes"]:
            action = {
                "truncate": "truncated to their first",
                "split": f"split into {s['overlong_pieces']} pieces of at most",
                "drop": "dropped: longer than",
            }[data_args.overlong_tunes]
            add(f"  {'':<16} {s['overlong_tunes']} tunes over {block_size} tokens {action} {block_size} tokens (overlong_tunes)")
        if s["tunes_with_unknown_chars"]:
            plan.warnings.append(
                f"{s['tunes_with_unknown_chars']} {split} tunes have characters the tokenizer maps to <unk>"
            )
    ga, world = training_args.gradient_accumulation_steps, training_args.world_size
    batch_rows = training_args.per_device_train_batch_size * ga * world
    train = data_stats["train"]
    if "estimated_from" in train:  # a stream: its length is unknown, max_steps sets the run
        total = training_args.max_steps
        tunes = total * batch_rows * block_size * (1 - train["padding_share"]) / train["kept_tokens_per_tune"]
        length = f"max_steps {total}, about {_count(tunes)} tunes at the estimated size (streamed: epochs unknown)"
    elif training_args.max_steps > 0:
        micro, per_epoch = steps_per_epoch(train["rows"], training_args)
        total = training_args.max_steps
        length = f"max_steps {total} (= {total / per_epoch:.2f} epochs)"
    else:
        micro, per_epoch = steps_per_epoch(train["rows"], training_args)
        total = math.ceil(training_args.num_train_epochs * per_epoch)
        length = f"num_train_epochs {training_args.num_train_epochs:g}"
    plan.total_steps = total
    add(
        f"  batch            {training_args.per_device_train_batch_size} rows x {ga} accumulation x {world} "
        f"process(es) = {batch_rows} rows = {_count(batch_rows * block_size)} tokens per optimizer step"
    )
    if "estimated_from" not in train:
        add(f"  epoch            {micro} micro-batches per process = {per_epoch} optimizer steps")
    add(f"  length           {length}: {total} optimizer steps in all")
    warm = warmup_steps(training_args, total)
    share = f"{warm / total:.0%} of the run" if warm <= total else "longer than the run"
    add(
        f"  schedule         {training_args.lr_scheduler_type.value} to peak {training_args.learning_rate:g}, "
        f"warmup {warm} steps ({share})"
    )
    add(
        f"  optimizer        {training_args.optim.value}, weight_decay {training_args.weight_decay:g}, "
        f"max_grad_norm {training_args.max_grad_norm:g}; seed {training_args.seed}"
    )
    precision = "bf16" if training_args.bf16 else "fp16" if training_args.fp16 else "fp32"
    add(f"  precision        {precision} on {training_args.device.type}")
    add(f"  output_dir       {training_args.output_dir}")
    sampling = sampling_text({**SAMPLING_DEFAULTS, **model_args.sampling})
    add(f"  sampling         {sampling} (how sample.py and evaluate_checkpoints.py sample this run)")
    plan.lines += [f"  note             {n}" for n in notes]
    if warm >= total:
        plan.warnings.append(
            f"warmup_steps {warm} >= {total} total optimizer steps: the learning rate never reaches its peak "
            f"{training_args.learning_rate:g} (lower warmup_steps or train longer)"
        )
    for key, strategy in (("logging", "logging_strategy"), ("eval", "eval_strategy"), ("save", "save_strategy")):
        every = getattr(training_args, f"{key}_steps")
        if getattr(training_args, strategy).value == "steps" and every and _every(every, total) > total:
            plan.warnings.append(f"{key}_steps {every:g} > {total} total steps: {key} happens only at the end of training")
    return plan
