"""`streaming: true`: tunes read, cleaned, tokenized and packed on the fly, for corpora that should not be
copied to disk first (a hub dataset, a folder of huge files).

The steps are the map-style ones, applied by `datasets.IterableDataset.map` as the rows are read:
`data.clean_batch`, `packing.tokenize_batch`, and `packing.pack_window` over a buffer of `PACK_WINDOW`
tunes (best fit within the buffer). Splits follow each tune's content hash, as in data.py, so an exact
duplicate never sits in two splits. What a stream cannot give: deduplication within a split (it would need
every tune's key in memory) and exact sizes: the plan estimates them from the first `ESTIMATE_TUNES` tunes
and says so.

Resume: Trainer fast-forwards a stream by reading and dropping the batches already trained on, which
gives the very rows an uninterrupted run would see as long as the run is still in its first pass over
the data (tests/test_data.py checks it). Past the first pass Trainer would skip from the start of the
first pass instead, so `StreamPasses` records the pass in each checkpoint and `check_stream_resume`
refuses such a resume before anything runs.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import datasets
import numpy as np
from transformers import PreTrainedTokenizerBase, TrainerCallback
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_callback import ExportableState

from .args import DataArguments
from .data import (
    SPLITS,
    clean_batch,
    keeps_meter,
    quiet_logger,
    root_reason,
    splits_of_keys,
    with_transposed_copies,
)
from .errors import UserError
from .packing import (
    PACK_WINDOW,
    PACKED,
    TOKENIZE_BATCH,
    TOKENIZED,
    pack_window,
    pad_token_id,
    tokenize_batch,
    tokens_kept,
)

ESTIMATE_TUNES = 10_000  # ~3 s of reading per split on a 2-core CPU; a book's first 1,000 tunes misled by 17%
# A window's rows come out longest tunes first; shuffling this many rows spreads them over the batches.
SHUFFLE_ROWS = 10_000


def clean_streams(raw: dict[str, datasets.IterableDataset], data_args: DataArguments) -> dict[str, datasets.IterableDataset]:
    """Cleaned `text` streams for train and validation (hash-split when the source has no validation split)."""
    fn_kwargs = {"keep_fields": data_args.keep_fields, "clean_abc": data_args.clean_abc}
    cleaned = {
        split: ds.map(clean_batch, batched=True, fn_kwargs=fn_kwargs)
        .filter(lambda batch: [not reason for reason in batch["skip_reason"]], batched=True)
        for split, ds in raw.items()
    }
    if "validation" not in cleaned:
        with _reading(data_args, "source"):  # concatenating reads each stream's first rows for their features
            pool = datasets.concatenate_datasets([ds for split, ds in cleaned.items() if split != "test"])
        pct = data_args.validation_split_percentage
        for split in ("train", "validation"):
            cleaned[split] = pool.filter(
                lambda batch, s=split: (splits_of_keys(np.array(batch["split_key"]), pct) == s).tolist(), batched=True
            )
    if data_args.train_tunes == "meter":
        cleaned["train"] = cleaned["train"].filter(keeps_meter, batched=True)
    limits = {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples}
    streams = {split: cleaned[split].take(limits[split]) if limits[split] else cleaned[split] for split in SPLITS[:2]}
    if data_args.transpose_train:
        streams["train"] = streams["train"].select_columns(["text"]).map(
            with_transposed_copies, batched=True, fn_kwargs={"shifts": data_args.transpose_train}
        )
    return streams


def tokenize_and_pack_stream(
    tunes: dict[str, datasets.IterableDataset],
    tokenizer: PreTrainedTokenizerBase,
    block_size: int,
    data_args: DataArguments,
    seed: int,
) -> tuple[datasets.IterableDatasetDict, dict]:
    """Packed-row streams of train and validation, and each split's statistics estimated from its first tunes."""
    pad_id = pad_token_id(tokenizer)
    pack_kwargs = {"block_size": block_size, "pad_id": pad_id, "policy": data_args.overlong_tunes}
    packed, stats = {}, {}
    for split, ds in tunes.items():
        tokenized = ds.select_columns(["text"]).map(
            tokenize_batch,
            batched=True,
            batch_size=TOKENIZE_BATCH,
            fn_kwargs={"tokenizer": tokenizer, "train_on": data_args.train_on},
            remove_columns=["text"],
            features=TOKENIZED,
        )
        rows = tokenized.map(
            pack_window, batched=True, batch_size=PACK_WINDOW, fn_kwargs=pack_kwargs,
            remove_columns=list(TOKENIZED), features=PACKED,
        )
        packed[split] = rows.shuffle(seed=seed, buffer_size=SHUFFLE_ROWS) if split == "train" else rows
        stats[split] = _estimate(tokenized, split, data_args, pack_kwargs)
    return datasets.IterableDatasetDict(packed), stats


@contextlib.contextmanager
def _reading(data_args: DataArguments, what: str):
    """A source that fails while it is read becomes one line that names it."""
    try:
        with quiet_logger("datasets"):
            yield
    except Exception as e:  # datasets, pyarrow and pandas raise many types for a source they cannot read
        raise UserError(f"dataset '{data_args.dataset_name_or_path}': reading the {what} stream failed ({root_reason(e)}); check the source") from None


def _estimate(tokenized: datasets.IterableDataset, split: str, data_args: DataArguments, pack_kwargs: dict) -> dict:
    """Per-tune sizes and padding from the split's first tunes; reading them also surfaces a bad source now."""
    with _reading(data_args, split):
        sample = list(tokenized.take(ESTIMATE_TUNES))
    if not sample:
        raise UserError(f"dataset '{data_args.dataset_name_or_path}': the {split} stream holds no usable tunes")
    lengths = np.array([tune["length"] for tune in sample])
    block_size, policy = pack_kwargs["block_size"], pack_kwargs["policy"]
    rows = len(pack_window({key: [tune[key] for tune in sample] for key in ("input_ids", "masked")}, **pack_kwargs)["input_ids"])
    kept = tokens_kept(lengths, block_size, policy)
    return {
        "estimated_from": len(sample),
        "tokens_per_tune": float(lengths.mean()),
        "chars_per_tune": float(np.mean([tune["num_chars"] for tune in sample])),
        "overlong_share": float(np.mean(lengths > block_size)),
        "tunes_with_unknown_chars": sum(1 for tune in sample if tune["num_unk"]),
        "kept_tokens_per_tune": kept / len(sample),
        "padding_share": 1 - kept / (rows * block_size) if rows else 0.0,
    }


class StreamPasses(TrainerCallback, ExportableState):
    """Records in each checkpoint's trainer_state.json which pass over the streamed training set it was saved
    in (Trainer saves ExportableState callbacks there); `check_stream_resume` reads it back."""

    def __init__(self, pass_index: int = -1):
        self.pass_index = pass_index

    def on_train_begin(self, args, state, control, **kwargs):
        self.pass_index = -1  # a resumed run, too, starts again at the first pass (and skips what it trained)

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.pass_index += 1

    def state(self) -> dict:
        return {"args": {"pass_index": self.pass_index}, "attributes": {}}


def check_stream_resume(checkpoint: str) -> None:
    """Refuse to resume a streamed run from a checkpoint saved after its first pass over the data.

    Trainer fast-forwards a stream by skipping `global_step` batches from its start, which lands on the
    right row only within the first pass (measured: past it, the resumed run's losses and weights differ).
    """
    state_file = Path(checkpoint) / TRAINER_STATE_NAME
    try:
        saved = json.loads(state_file.read_text())["stateful_callbacks"][StreamPasses.__name__]
        pass_index = int(saved["args"]["pass_index"])
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(
            f"cannot resume {checkpoint} as a streamed run: it records no stream position (it was not trained "
            "with streaming); train with streaming off, or start a new output_dir"
        ) from None
    if pass_index > 0:
        raise UserError(
            f"cannot resume {checkpoint} exactly: it was saved in pass {pass_index + 1} over the streamed data, and "
            "Trainer fast-forwards a stream through its first pass only; start a new output_dir with "
            "model_name_or_path set to this checkpoint, or train with streaming off"
        )
