"""Loops: a block of music written again and again back to back, the commonest fault of a small model's own tunes.

One definition, used everywhere: a tune is in a loop where a block of LOOP_MIN_TOKENS..LOOP_MAX_TOKENS tokens
(characters, for the character tokenizer) starts a copy after LOOP_REPEATS back-to-back copies of it. Real tunes
do this about once in a hundred, many of them with runs of spaces or blank bars; the own tunes of the models
here 16 to 21 times in a hundred, and half or more of those still end within the token budget (README, "Loops,
counted").

- Counting: `most_copies` and `in_a_loop` (the loops metric, metrics/loops; the report's "in a loop").
- Sampling: `LoopLimitLogitsProcessor` masks the token that would start the copy (sample.py `--max_repeats`).
- Training: the loop penalty (DataArguments.loop_penalty, `LoopPenaltyTrainer`), after DITTO (Xu et al., 2022,
  "Learning to Break the Loop"): pseudo-loops, a line or a bar of a training tune written again and again
  (`pseudo_loops`), join each training batch, and from their (LOOP_REPEATS + 1)-th copy on each token's
  probability is pushed towards LOOP_DECAY times the probability of the same token one copy before
  (`loop_penalty`), so that the model learns that a loop this long ends. Unlike DITTO, which starts at the
  second copy, the first LOOP_REPEATS copies are left alone: music repeats a phrase twice as a matter of course.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence

import datasets
import numpy as np
import torch
from transformers import LogitsProcessor, PreTrainedTokenizerBase, Trainer

from .abc import header_length
from .args import DataArguments
from .attention import packed_kwargs
from .data import worker_count
from .packing import IGNORE_INDEX, start_token_id

# The shortest and longest block of tokens a loop repeats: shorter ones are figures (`A2A2 A2A2`), not loops; 128
# covers a line of four bars and then some. A tune is in a loop where such a block starts a copy after LOOP_REPEATS
# of them (the loop limit's default, the loops metric's count, and where the loop penalty starts).
LOOP_MIN_TOKENS, LOOP_MAX_TOKENS, LOOP_REPEATS = 8, 128, 3
# DITTO's lambda: each copy past LOOP_REPEATS is pushed to this share of the probability of the one before.
LOOP_DECAY = 0.5


def most_copies(items: Sequence) -> float:
    """The most back-to-back copies of any block of LOOP_MIN_TOKENS..LOOP_MAX_TOKENS items (token ids, or the
    characters of a tune) in `items`; a partial copy counts its fraction. From the longest run of positions equal
    to the one a block length before them: the count LoopLimitLogitsProcessor keeps per token, taken at once."""
    a = np.frombuffer(items.encode("utf-32-le"), dtype=np.uint32) if isinstance(items, str) else np.asarray(items)
    best = 1.0
    for p in range(LOOP_MIN_TOKENS, min(LOOP_MAX_TOKENS, len(a) - 1) + 1):
        edges = np.diff(np.concatenate(([0], (a[p:] == a[:-p]).astype(np.int8), [0])))
        if (edges == 1).any():
            best = max(best, float((np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).max() + p) / p)
    return best


def in_a_loop(text: str) -> bool:
    """Whether the tune writes a block of LOOP_MIN_TOKENS..LOOP_MAX_TOKENS characters more than LOOP_REPEATS
    times back to back: for a character tokenizer, whether the loop limit would have cut it."""
    return most_copies(text) > LOOP_REPEATS


class LoopLimitLogitsProcessor(LogitsProcessor):
    """Masks the token that would start the `max_repeats + 1`-th back-to-back copy of a block of tokens.

    A model caught in a loop writes one bar or line over and over until the token budget cuts the tune off (49 of
    the 59 own tunes of the CPU recipe cut off on 512 prompts). Real tunes repeat a phrase twice often and a figure
    of a few notes many times, but seldom a block of LOOP_MIN_TOKENS or more tokens more than 3 times running
    (1.1% of the bundled training tunes, 1.0% of the validation ones). For each row and each block length p in
    LOOP_MIN_TOKENS..LOOP_MAX_TOKENS it keeps how many of the last tokens equal the token p before them, updated
    per token; where that run covers `max_repeats` copies, the token that would continue them is masked, unless
    it is the only one the row has left (then the row keeps its scores for that step).
    """

    def __init__(self, max_repeats: int = LOOP_REPEATS):
        self.max_repeats = max_repeats
        self.periods = torch.arange(LOOP_MIN_TOKENS, LOOP_MAX_TOKENS + 1)  # the block lengths watched
        self.runs: torch.Tensor | None = None  # [rows, periods]
        self.read = 0  # tokens of input_ids read into self.runs

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.runs is None:
            self.periods = self.periods.to(input_ids.device)
            self.runs = torch.zeros(input_ids.shape[0], len(self.periods), dtype=torch.long, device=input_ids.device)
        for position in range(self.read, input_ids.shape[1]):  # the prompt on the first call, then one token
            before = position - self.periods
            same = (input_ids[:, before.clamp(min=0)] == input_ids[:, position, None]) & (before >= 0)
            self.runs = torch.where(same, self.runs + 1, 0)
        self.read = input_ids.shape[1]
        looping = self.runs >= (self.max_repeats - 1) * self.periods
        if not looping.any():
            return scores
        rows, blocks = looping.nonzero(as_tuple=True)
        banned = torch.zeros_like(scores, dtype=torch.bool)
        banned[rows, input_ids[rows, self.read - self.periods[blocks]]] = True
        left = (scores.masked_fill(banned, float("-inf")) > float("-inf")).any(-1, keepdim=True)
        return scores.masked_fill(banned & left, float("-inf"))


def pseudo_loops(batch: dict, indices: list[int], tokenizer: PreTrainedTokenizerBase, block_size: int, seed: int) -> dict:
    """For each tune (a `datasets.map` function, batched, with indices), a pseudo-loop row of `block_size` tokens:
    `<s>`, the tune's header, then one of its lines or bars written again and again. Which one is drawn from `seed`
    and the tune's index, so that the rows are the same every run and cacheable. A tune with no line or bar of
    LOOP_MIN_TOKENS..LOOP_MAX_TOKENS tokens that fits LOOP_REPEATS + 2 times after its header gives no row."""
    bos = start_token_id(tokenizer)
    encode = lambda texts: tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]  # noqa: E731
    rows = {"loop_ids": [], "loop_start": [], "loop_period": []}
    for text, index in zip(batch["text"], indices):
        cut = header_length(text)
        head = [bos, *encode([text[:cut]])[0]]
        room = block_size - len(head)
        lines = text[cut:].split("\n")
        pools = [[line + "\n" for line in lines], [bar + "|" for line in lines for bar in line.split("|")[:-1]]]
        rng = random.Random(f"{seed}-{index}")
        if rng.random() < 0.5:
            pools.reverse()
        for pool in filter(None, pools):  # bars or lines, as drawn; the other where none fits
            blocks = [ids for ids in encode(pool) if LOOP_MIN_TOKENS <= len(ids) <= LOOP_MAX_TOKENS]
            blocks = [ids for ids in blocks if (LOOP_REPEATS + 2) * len(ids) <= room]
            if blocks:
                block = rng.choice(blocks)
                rows["loop_ids"].append((head + block * (room // len(block) + 1))[:block_size])
                rows["loop_start"].append(len(head))
                rows["loop_period"].append(len(block))
                break
    return rows


LOOP_ROWS = datasets.Features({
    "loop_ids": datasets.Sequence(datasets.Value("int32")),
    "loop_start": datasets.Value("int32"),  # where the first copy begins
    "loop_period": datasets.Value("int32"),  # the block's length in tokens
})


def pseudo_loop_rows(
    train: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, block_size: int, data_args: DataArguments, seed: int
) -> datasets.Dataset:
    """The pseudo-loops of the training tunes (`pseudo_loops`), cached by datasets.map like the packed rows."""
    return train.map(
        pseudo_loops,
        batched=True,
        with_indices=True,
        fn_kwargs={"tokenizer": tokenizer, "block_size": block_size, "seed": seed},
        remove_columns=train.column_names,
        features=LOOP_ROWS,
        num_proc=worker_count(data_args, len(train)),
        desc="pseudo-loops",
    )


def loop_penalty(logits: torch.Tensor, ids: torch.Tensor, starts: torch.Tensor, periods: torch.Tensor) -> torch.Tensor:
    """DITTO's loss over pseudo-loop rows: at every token of copy LOOP_REPEATS + 1 on, -log(1 - |p - LOOP_DECAY x
    p_before|), where p is the probability the model gives the token and p_before, held fixed, the one it gave the
    same token a copy before; the mean over those tokens. 0 where each copy is LOOP_DECAY times as likely as the
    one before; -log(1 - p / 2) where the model copies without doubt."""
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), ids[:, 1:], reduction="none")
    p = torch.exp(-nll)  # p[:, j]: the probability of token j + 1
    positions = torch.arange(p.shape[1], device=p.device)[None, :]
    scored = positions >= (starts + LOOP_REPEATS * periods - 1)[:, None]
    before = p.gather(1, (positions - periods[:, None]).clamp(min=0)).detach()
    loss = -torch.log((1 - (p - LOOP_DECAY * before).abs()).clamp(min=1e-6))
    return loss[scored].mean()


class LoopPenaltyTrainer(Trainer):
    """`Trainer` whose training loss adds `weight` x `loop_penalty` over `rows` pseudo-loop rows (0: half as many as
    the batch has rows, at least one), drawn for each batch from `loops` (a `pseudo_loops` dataset) by the run's seed
    and the batch itself, so that a resumed run draws the same ones. They run in the batch's own forward pass with no
    labels, so the language-model loss and `num_items_in_batch` stay as they were; evaluation never sees them.
    The mean penalty is logged beside the loss as `loop_penalty`."""

    def __init__(self, *args, loops: datasets.Dataset, weight: float, rows: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.loops, self.weight, self.rows, self.penalties = loops.with_format("torch"), weight, rows, []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        rows, width = inputs["input_ids"].shape
        first_row = inputs["input_ids"][0].cpu().numpy().tobytes()
        drawn = np.random.default_rng([self.args.seed, zlib.crc32(first_row)]).choice(
            len(self.loops), min(len(self.loops), self.rows or max(1, rows // 2)), replace=False
        )
        loops = {k: v.to(inputs["input_ids"].device) for k, v in self.loops[drawn].items()}
        ids = loops["loop_ids"][:, :width]
        inputs = {**inputs, "input_ids": torch.cat([inputs["input_ids"], ids])}
        inputs["labels"] = torch.cat([inputs["labels"], torch.full_like(ids, IGNORE_INDEX)])
        if "position_ids" in inputs:
            positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)  # one tune a row
            inputs["position_ids"] = torch.cat([inputs["position_ids"], positions])
        if "attention_mask" in inputs:
            inputs["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(ids)])
        if "cu_seq_lens_q" in inputs:  # flash-attention's boundaries, for the rows as they now are
            inputs.update(packed_kwargs(inputs["position_ids"]))
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        penalty = loop_penalty(outputs.logits[rows:], ids, loops["loop_start"], loops["loop_period"])
        self.penalties.append(penalty.detach())
        # training_step divides the loss by the accumulation steps unless it counts as scaled for them already
        # (Trainer's rule): the penalty, a mean over this batch's loops, must then be divided here
        scaled = self.loss_is_scaled_for_ga
        if scaled is None:
            scaled = (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or self.compute_loss_func is not None
        # (train() sets the steps of each update, fewer for an epoch's last; outside it, the recipe's)
        steps = getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)
        loss = loss + self.weight * penalty / (steps if scaled else 1)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict, *args, **kwargs) -> None:
        if self.penalties and "loss" in logs:
            logs["loop_penalty"] = round(torch.stack(self.penalties).mean().item(), 4)
            self.penalties.clear()
        super().log(logs, *args, **kwargs)
