"""Fine-tune (or train from scratch) a causal language model on ABC tunes, from a JSON recipe.

    accelerate launch run_finetune.py recipes/music_abc.json
    python run_finetune.py recipes/music_abc_quick.json --dry_run
    python run_finetune.py recipes/music_abc_quick.json --max_steps 3 --output_dir runs/try

Recipe keys are `TrainingArguments` fields plus those in finetune/args.py; flags after the recipe
override it. Re-running a command resumes from the newest checkpoint in its output_dir.
"""

from __future__ import annotations

import finetune

finetune.quiet_bitsandbytes()  # before transformers imports bitsandbytes (see its docstring)

import gc
import os
import sys

import torch
from transformers import Trainer, set_seed

from finetune.attention import PackedCollator
from finetune.curves import LossPlotCallback
from finetune.data import clean_splits, load_raw_splits
from finetune.errors import run_command
from finetune.evaluation.token_metrics import TokenMetrics, preprocess_logits_for_metrics
from finetune.loops import LoopPenaltyTrainer, pseudo_loop_rows
from finetune.model import count_parameters, load_config, load_model, load_tokenizer, merge_adapter, resolve_block_size
from finetune.model_card import draft_model_card
from finetune.packing import tokenize_and_pack
from finetune.plan import make_plan
from finetune.recipe import parse_recipe
from finetune.run_dir import check_disk_space, check_output_dir, check_resume_tokenizer, write_run_files
from finetune.streaming import StreamPasses, check_stream_resume, clean_streams, tokenize_and_pack_stream


def main(argv: list[str]) -> int:
    ########## recipe: parse and validate everything before touching data, model or output_dir
    recipe = parse_recipe(argv)
    model_args, data_args, run_args, training_args = (
        recipe.model_args, recipe.data_args, recipe.run_args, recipe.training_args,
    )
    resume_from = training_args.resume_from_checkpoint or check_output_dir(
        training_args.output_dir, recipe.resolved, run_args.allow_recipe_change
    )
    if data_args.streaming and resume_from:
        check_stream_resume(resume_from)
    config = load_config(model_args)
    block_size = resolve_block_size(data_args.max_seq_length, config, trained=bool(model_args.model_name_or_path))
    set_seed(training_args.seed)

    ########## data: clean tunes, tokenize, pack (cached by datasets; the main process goes first)
    with training_args.main_process_first(desc="prepare data"):
        if data_args.streaming:  # read, cleaned, tokenized and packed while training; sizes estimated
            tokenizer = load_tokenizer(model_args, block_size)
            raw = load_raw_splits(data_args)
            tunes, skipped = clean_streams(raw, data_args), {}
            lm_datasets, data_stats = tokenize_and_pack_stream(tunes, tokenizer, block_size, data_args, training_args.seed)
        else:
            raw = load_raw_splits(data_args)
            tunes, skipped = clean_splits(raw, data_args)
            tokenizer = load_tokenizer(model_args, block_size, tunes["train"]["text"])
            lm_datasets, data_stats = tokenize_and_pack(tunes, tokenizer, block_size, data_args)
            if data_args.loop_penalty:
                loops = pseudo_loop_rows(tunes["train"], tokenizer, block_size, data_args, training_args.seed)
    if resume_from and not model_args.model_name_or_path:
        check_resume_tokenizer(resume_from, tokenizer.get_vocab())
    notes = recipe.notes + ([f"tunes read from {raw.layout}"] if raw.layout else [])
    if data_args.max_seq_length and data_args.max_seq_length > block_size:
        notes.append(f"max_seq_length {data_args.max_seq_length} is past the model's context: rows of {block_size} tokens")
    notes += [f"skipped tunes: {skipped}"] if skipped else []
    if model_args.tokenizer_merges:
        notes.append(f"tokenizer: {len(tokenizer)} tokens, ABC characters + merges learned from the train tunes")
    if data_args.balance_meters:
        notes.append(f"train tunes include copies rescaled to the (M:, L:) pairs under {data_args.balance_meters} tunes")
    if data_args.transpose_train:
        notes.append(f"train tunes include their copies moved by {data_args.transpose_train} semitones")
    if data_args.loop_penalty:
        rows = {0: "half a batch", 1: "one row"}.get(data_args.loop_penalty_rows, f"{data_args.loop_penalty_rows} rows")
        notes.append(f"loop penalty {data_args.loop_penalty:g}: {len(loops)} pseudo-loops, {rows} of them a step")
    elif data_args.loop_penalty_rows:  # e.g. `--loop_penalty 0` over a recipe that sets both
        notes.append(f"loop penalty off: loop_penalty_rows {data_args.loop_penalty_rows} unused")

    ########## model and plan
    compute_dtype = torch.bfloat16 if training_args.bf16 else torch.float16 if training_args.fp16 else torch.float32
    model = load_model(model_args, config, tokenizer, on_meta=run_args.dry_run, compute_dtype=compute_dtype)
    total_parameters, trainable_parameters = count_parameters(model)
    plan = make_plan(
        model_args, data_args, training_args, data_stats, (total_parameters, trainable_parameters), block_size, notes,
        description=run_args.description,
    )
    if training_args.should_log:
        print(plan, flush=True)
        if resume_from:
            print(f"Resuming from {resume_from}", flush=True)
    if run_args.dry_run:
        return 0
    check_disk_space(training_args.output_dir, trainable_parameters, training_args.optim.value)

    ########## train, then save the final model and tokenizer beside the checkpoints
    trainer_class, loop_args = Trainer, {}
    if data_args.loop_penalty:
        trainer_class = LoopPenaltyTrainer
        loop_args = {"loops": loops, "weight": data_args.loop_penalty, "rows": data_args.loop_penalty_rows}
    trainer = trainer_class(
        model=model,
        args=training_args,
        train_dataset=lm_datasets["train"],
        eval_dataset=lm_datasets["validation"],
        data_collator=PackedCollator(varlen_kwargs=model_args.attn_implementation == "flash_attention_2"),
        processing_class=tokenizer,
        compute_metrics=TokenMetrics(tokenizer),
        preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        callbacks=[LossPlotCallback(), *([StreamPasses()] if data_args.streaming else [])],
        **loop_args,
    )
    if trainer.is_world_process_zero():
        write_run_files(training_args.output_dir, recipe.resolved, ["run_finetune.py", *argv])
    result = trainer.train(resume_from_checkpoint=resume_from)
    trainer.save_model()
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    draft_model_card(trainer, model_args, data_args, run_args)  # output_dir/README.md; evaluation adds its results
    if model_args.merge_adapter and trainer.is_world_process_zero():
        merge_adapter(training_args.output_dir, os.path.join(training_args.output_dir, "merged"))
        print(f"Merged model saved to {training_args.output_dir}/merged", flush=True)
    if torch.distributed.is_initialized():
        # End the process group while Python is alive: left to the interpreter's exit, gloo's worker threads can
        # abort it. DDP's reducer holds the group, so it goes first, or the group's destructor waits on it.
        trainer.accelerator.free_memory()
        del trainer, model
        gc.collect()
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return 0


def cli() -> int:
    return run_command(main)


if __name__ == "__main__":
    sys.exit(cli())
