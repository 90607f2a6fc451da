"""The recipe keys that are not `TrainingArguments` fields: what model, what data, how to run.

Every field has a default and a help text; `python run_finetune.py --help` lists them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .abc import DEFAULT_KEEP_FIELDS

BUILTIN_DATASET = "music21"
# How tunes are sampled unless the recipe's `sampling` or a flag says otherwise: TunesFormer's and NotaGen's settings
# for character-level ABC decoders (min_p 0: off).
SAMPLING_DEFAULTS = {"temperature": 1.2, "top_k": 8, "top_p": 0.8, "min_p": 0.0}


def sampling_text(settings: dict) -> str:
    """`settings` (some of SAMPLING_DEFAULTS' keys) as the help, the plan and sample.py print them."""
    return ", ".join(f"{k} {v}" for k, v in settings.items())


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "A checkpoint to fine-tune (local path or hub id). Unset: build a new model from model_config."},
    )
    model_config: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "Config of a new model when model_name_or_path is unset: `model_type` plus that config's fields, "
            "e.g. {\"model_type\": \"llama\", \"hidden_size\": 256}. vocab_size and special token ids come from "
            "the tokenizer. On the command line, a JSON object merged into the recipe's."
        },
    )
    sampling: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": f"How the run's model samples, over the field's defaults ({sampling_text(SAMPLING_DEFAULTS)}): "
            "sample.py and evaluate_checkpoints.py take these for the run's checkpoints unless flags say "
            "otherwise, e.g. {\"temperature\": 1.0}. Training ignores them."
        },
    )
    tokenizer_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A tokenizer (local path or hub id). Unset: the checkpoint's own tokenizer, or for a new model "
            "the built-in character-level ABC tokenizer."
        },
    )
    tokenizer_merges: int = field(
        default=0,
        metadata={
            "help": "For a new model: BPE merges learned from the training tunes on top of the character-level ABC "
            "tokenizer (its ids unchanged; a token never spans a line end), so a token holds ~2.5 characters at "
            "1024. 0: character level."
        },
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2", "flex_attention"] = field(
        default="sdpa",
        metadata={
            "help": "Attention kernel. Every choice keeps packed tunes apart; sdpa trains through sdpa_packed, "
            "which runs SDPA's causal kernel tune by tune (finetune/attention.py)."
        },
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Run Python code shipped with a hub checkpoint. Off unless you trust its author."},
    )
    # LoRA / QLoRA, under TRL's names (trl.ModelConfig) so that knowledge carries over.
    use_peft: bool = field(
        default=False,
        metadata={"help": "Train LoRA adapters (peft) on model_name_or_path instead of all weights."},
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (the update is scaled by alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA path."})
    lora_target_modules: list[str] | None = field(
        default=None, metadata={"help": "Module names to adapt, e.g. [\"q_proj\", \"v_proj\"]. Unset: every linear layer."}
    )
    load_in_4bit: bool = field(
        default=False,
        metadata={"help": "QLoRA: load the base weights in 4-bit NF4 (bitsandbytes, CUDA) under the LoRA adapters."},
    )
    merge_adapter: bool = field(
        default=False,
        metadata={"help": "After training, also save the base model with the adapters merged in, to output_dir/merged."},
    )


@dataclass
class DataArguments:
    dataset_name_or_path: str = field(
        default=BUILTIN_DATASET,
        metadata={
            "help": "'music21': the ~13,000 ABC tunes shipped with music21, prepared once into data/music21_abc/. "
            "Otherwise a local .abc/.txt/.jsonl/.json/.csv/.parquet file, a folder of them (files named "
            "train.*/validation.*/test.* are used as those splits), or a datasets hub id."
        },
    )
    text_column: str = field(default="text", metadata={"help": "Column holding the tune for jsonl/csv/parquet/hub data."})
    sources: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Keep only the tunes of these sources, in every split: a collection of the built-in corpus "
            "(e.g. 'oneills1850'; its folders), or a file of a tune-book folder (e.g. 'reels.abc'). Empty: all."
        },
    )
    exclude_sources: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Leave out the tunes of these sources (named as for 'sources') in every split, e.g. to train a "
            "base that has not seen the tune book it will be fine-tuned on. Empty: none."
        },
    )
    validation_split_percentage: int = field(
        default=5,
        metadata={
            "help": "Share of tunes held out for validation, and again for test, when the data has no such split. "
            "Tunes are assigned by a hash of their text, so the split does not depend on file order."
        },
    )
    max_seq_length: int | None = field(
        default=None,
        metadata={"help": "Tokens per packed row. Unset: the model's context length (max_position_embeddings). A "
                  "checkpoint with a shorter context trains on rows of its context (the plan says so)."},
    )
    overlong_tunes: Literal["truncate", "split", "drop"] = field(
        default="truncate",
        metadata={
            "help": "What to do with a tune longer than max_seq_length: 'truncate' keeps its start (header "
            "included), 'split' trains on every max_seq_length piece as its own sequence, 'drop' leaves it out."
        },
    )
    clean_abc: bool = field(
        default=True,
        metadata={"help": "Clean each text as an ABC tune (fields, comments, voices). Off: use any text as it is."},
    )
    keep_fields: str = field(
        default=DEFAULT_KEEP_FIELDS,
        metadata={
            "help": "ABC field letters kept in the training text, e.g. 'MLKRQP'. Add 'T' to condition on titles. "
            "Other fields (X: N: Z: S: B: O: ...) and %% comments are dropped."
        },
    )
    train_on: Literal["all", "body"] = field(
        default="all",
        metadata={
            "help": "'all': every token of a tune is a target. 'body': the header (up to and including the K: line) "
            "is the prompt and only the music after it is learned, for header-conditioned generation."
        },
    )
    train_tunes: Literal["all", "meter"] = field(
        default="all",
        metadata={
            "help": "'meter': train only on the tunes whose every bar keeps the meter (the reader's bar verdicts, "
            "which the checker's bar metric counts: pickups and bars split around repeats are kept), so the model "
            "never learns a bar that is off. Validation and test keep every tune. 'all': every clean tune."
        },
    )
    balance_meters: int = field(
        default=0,
        metadata={
            "help": "Data augmentation: every (M:, L:) pair that at least 2 and fewer than this many training tunes "
            "write is topped up to this many with copies of tunes of the same bar at another note value (6/8 with "
            "L:1/8 rewritten as 6/4 with L:1/4: only the header changes, finetune/abc/rescale.py). Validation and "
            "test keep their tunes as written. 0: no copies."
        },
    )
    transpose_train: list[int] = field(
        default_factory=list,
        metadata={
            "help": "Data augmentation: every training tune is added again moved by each of these semitone shifts, "
            "e.g. [-2, -1, 1, 2] (finetune/abc/transpose.py). Validation and test tunes stay in their keys. "
            "Empty: no copies."
        },
    )
    loop_penalty: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the loop penalty (finetune/loops.py, after DITTO): each training batch also holds "
            "pseudo-loops (loop_penalty_rows), a line or bar of a training tune written again and again, and from "
            "their 4th copy on the model is taught to halve the probability of each further copy, so that its own "
            "tunes leave a loop. 0: off."
        },
    )
    loop_penalty_rows: int = field(
        default=0,
        metadata={
            "help": "How many pseudo-loop rows join each training batch under the loop penalty. Each row costs about "
            "what a training row costs. 0: half as many as the batch has rows (at least one). Unused while loop_penalty is 0."
        },
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N training tunes (before packing), for quick runs."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N validation tunes (before packing)."}
    )
    preprocessing_num_workers: int | None = field(
        default=None,
        metadata={
            "help": "Processes for cleaning, tokenizing and packing (datasets.map num_proc). Unset: every core for "
            "a split of 50,000 tunes or more, one process below that (starting workers costs more than it saves)."
        },
    )
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Read, clean, tokenize and pack tunes on the fly (datasets.IterableDataset) instead of preparing "
            "an Arrow cache first: for corpora too large to copy to disk. Needs max_steps; packs best-fit over "
            "buffers of 20,000 tunes; does not deduplicate; the plan's sizes are estimates. See the README."
        },
    )


@dataclass
class RunArguments:
    description: str = field(
        default="",
        metadata={"help": "What the recipe is for, on what hardware and in about how long. The plan prints it, and "
                  "the README's table of recipes is made from it (`python -m finetune.recipe --table`)."},
    )
    license: str | None = field(
        default=None,
        metadata={"help": "The license the run's model card gives its model, as a hub license id ('mit', 'apache-2.0', "
                  "'other'); unset: a hub base model's own, else none."},
    )
    dry_run: bool = field(
        default=False,
        metadata={"help": "Print the plan (data sizes, steps, warmup share, parameters) and exit without training."},
    )
    allow_recipe_change: bool = field(
        default=False,
        metadata={
            "help": "Resume from the checkpoints in output_dir even though they were written by a different recipe. "
            "Without it such a run is refused; pick a new output_dir to start afresh."
        },
    )
