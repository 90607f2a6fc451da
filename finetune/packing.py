"""Tokenize tunes and bin-pack whole tunes into fixed-length rows that keep every tune to itself.

A row holds several tunes back to back. Each tune's `position_ids` restart at 0, and the attention keeps
every tune to itself (finetune/attention.py says how, for each implementation). The first token of each tune (`<s>`)
gets label -100: it is not predicted from the tune before it (with `train_on: body`, neither is the
header). Padding fills the rest of a row, masked the same way.

Both steps run through `datasets.map`, so their results are cached on disk, and both work on bounded
batches: tokenizing holds `TOKENIZE_BATCH` tunes at a time and packing `PACK_WINDOW`, so the memory of
preparation does not grow with the corpus. Statistics are read from numeric columns, never from the
token lists.
"""

from __future__ import annotations

import bisect

import datasets
import numpy as np
from transformers import PreTrainedTokenizerBase

from .abc import header_length
from .args import DataArguments
from .data import numeric_columns, worker_count

IGNORE_INDEX = -100
# Rows are packed from this many consecutive tunes at a time. With 20,000 tunes to choose from, best-fit
# leaves no more padding than over a whole split (measured on 100,000 tunes: 2.90% either way), and a
# window's token lists take ~200 MB, whatever the corpus size.
PACK_WINDOW = 20_000
TOKENIZE_BATCH = 1_000  # datasets.map's default

TOKENIZED = datasets.Features({
    "input_ids": datasets.Sequence(datasets.Value("int32")),
    "masked": datasets.Value("int32"),  # leading tokens that are not targets: <s>, and the header for train_on=body
    "length": datasets.Value("int32"),
    "num_chars": datasets.Value("int32"),
    "num_unk": datasets.Value("int32"),
})
PACKED = datasets.Features({name: datasets.Sequence(datasets.Value("int32")) for name in ("input_ids", "labels", "position_ids")})


def start_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token every tune starts with: `<s>`, or end-of-text for tokenizers that have no start token (GPT-2)."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def pad_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token that fills rows and batches: `<pad>`, or end-of-text for tokenizers that have none."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def tokenize_batch(batch: dict, tokenizer: PreTrainedTokenizerBase, train_on: str = "all") -> dict:
    """`<s>` tune `</s>`, and how many leading tokens are not targets, for every tokenizer (GPT-2 style ones
    use end-of-text for both ends).

    The header and the body are tokenized apart so that the boundary is a token boundary whatever the
    tokenizer; the header ends in a newline, so this is how any tokenizer would cut it anyway.
    """
    bos = start_token_id(tokenizer)
    cuts = [header_length(text) for text in batch["text"]]
    # verbose=False: tunes longer than the context are expected here; the packer handles them.
    encode = lambda texts: tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]  # noqa: E731
    headers = encode([text[:cut] for text, cut in zip(batch["text"], cuts)])
    bodies = encode([text[cut:] for text, cut in zip(batch["text"], cuts)])
    input_ids = [[bos, *header, *body, tokenizer.eos_token_id] for header, body in zip(headers, bodies)]
    return {
        "input_ids": input_ids,
        "masked": [1 + (len(header) if train_on == "body" else 0) for header in headers],
        "length": [len(ids) for ids in input_ids],
        "num_chars": [len(text) for text in batch["text"]],
        "num_unk": [ids.count(tokenizer.unk_token_id) if tokenizer.unk_token_id is not None else 0 for ids in input_ids],
    }


def labels_of(ids: list[int], masked: int) -> list[int]:
    return [IGNORE_INDEX] * masked + ids[masked:]


def fit_to_length(sequences: list[list[int]], labels: list[list[int]], max_len: int, policy: str):
    """Apply the overlong-tune policy to (ids, labels) pairs: 'truncate', 'split' into pieces, or 'drop'.

    A piece of a split tune is a sequence of its own: its first token is not predicted either.
    """
    out_ids, out_labels = [], []
    for ids, lab in zip(sequences, labels):
        if len(ids) <= max_len:
            out_ids.append(ids)
            out_labels.append(lab)
        elif policy == "truncate":
            out_ids.append(ids[:max_len])
            out_labels.append(lab[:max_len])
        elif policy == "split":
            for i in range(0, len(ids), max_len):
                out_ids.append(ids[i : i + max_len])
                out_labels.append([IGNORE_INDEX, *lab[i + 1 : i + max_len]])
    return out_ids, out_labels


def tokens_kept(lengths: np.ndarray, max_len: int, policy: str) -> int:
    """How many of the tunes' tokens reach the rows under the overlong-tune policy."""
    fits = lengths <= max_len
    over = {"truncate": max_len, "split": lengths, "drop": 0}[policy]
    return int(np.where(fits, lengths, over).sum())


def best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Bins of indices whose lengths sum to at most `capacity`: longest first, each into the fullest bin it fits.

    Deterministic for the same lengths. Every length must be at most `capacity`.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    # Free space of the open bins, sorted, with the bin index as tie-breaker.
    free: list[tuple[int, int]] = []
    for i in order:
        pos = bisect.bisect_left(free, (lengths[i], -1))
        if pos == len(free):
            bins.append([i])
            space, b = capacity - lengths[i], len(bins) - 1
        else:
            space, b = free.pop(pos)
            bins[b].append(i)
            space -= lengths[i]
        if space > 0:
            bisect.insort(free, (space, b))
    return bins


def pack_rows(sequences: list[list[int]], labels: list[list[int]], block_size: int, pad_id: int) -> dict:
    """Rows of exactly `block_size` tokens with `input_ids`, `labels` and `position_ids`."""
    rows = {"input_ids": [], "labels": [], "position_ids": []}
    for members in best_fit_decreasing([len(s) for s in sequences], block_size):
        input_ids, row_labels, position_ids = [], [], []
        for i in members:
            input_ids += sequences[i]
            row_labels += labels[i]
            position_ids += range(len(sequences[i]))
        pad = block_size - len(input_ids)
        input_ids += [pad_id] * pad
        row_labels += [IGNORE_INDEX] * pad
        position_ids += range(pad)
        rows["input_ids"].append(input_ids)
        rows["labels"].append(row_labels)
        rows["position_ids"].append(position_ids)
    return rows


def pack_window(batch: dict, block_size: int, pad_id: int, policy: str) -> dict:
    labels = [labels_of(ids, masked) for ids, masked in zip(batch["input_ids"], batch["masked"])]
    ids, labels = fit_to_length(batch["input_ids"], labels, block_size, policy)
    return pack_rows(ids, labels, block_size, pad_id)


def tokenize_and_pack(
    tunes: datasets.DatasetDict,
    tokenizer: PreTrainedTokenizerBase,
    block_size: int,
    data_args: DataArguments,
    splits: tuple[str, ...] = ("train", "validation"),
) -> tuple[datasets.DatasetDict, dict]:
    """Packed rows of `splits`, and per-split statistics for the run plan."""
    pad_id = pad_token_id(tokenizer)
    policy = data_args.overlong_tunes
    packed, stats = {}, {}
    for split in splits:
        workers = worker_count(data_args, len(tunes[split]))
        tokenized = tunes[split].map(
            tokenize_batch,
            batched=True,
            batch_size=TOKENIZE_BATCH,
            fn_kwargs={"tokenizer": tokenizer, "train_on": data_args.train_on},
            remove_columns=tunes[split].column_names,
            features=TOKENIZED,
            num_proc=workers,
            desc=f"tokenize {split}",
        )
        packed[split] = tokenized.map(
            pack_window,
            batched=True,
            batch_size=PACK_WINDOW,
            fn_kwargs={"block_size": block_size, "pad_id": pad_id, "policy": policy},
            remove_columns=tokenized.column_names,
            features=PACKED,
            num_proc=workers if workers and len(tokenized) > PACK_WINDOW else None,
            desc=f"pack {split}",
        )
        columns = numeric_columns(tokenized, ["length", "num_chars", "num_unk"])
        lengths = columns["length"].astype(np.int64)
        overlong = lengths[lengths > block_size]
        kept = tokens_kept(lengths, block_size, policy)
        rows = len(packed[split])
        stats[split] = {
            "tunes": len(lengths),
            "tokens": int(lengths.sum()),
            "chars": int(columns["num_chars"].sum()),
            "tunes_with_unknown_chars": int(np.count_nonzero(columns["num_unk"])),
            "overlong_tunes": len(overlong),
            "overlong_pieces": int((-(-overlong // block_size)).sum()),
            "tokens_in_rows": kept,
            "rows": rows,
            "padding_share": 1 - kept / (rows * block_size) if rows else 0.0,
        }
    return datasets.DatasetDict(packed), stats
