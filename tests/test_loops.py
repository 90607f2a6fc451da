"""The loop penalty (finetune/loops.py): pseudo-loops are real lines or bars written again and again, for any
tune; the penalty scores exactly the copies past the third and is nothing where each halves the one before; the
trainer adds it without touching the language-model loss, only in training, scaled for gradient accumulation; and
a run with it logs it."""

import json
import math
import random

import pytest
import torch
from conftest import TINY_RECIPE, run_cli
from test_fuzz import ABC_PIECES, mutate
from transformers import AutoConfig, AutoModelForCausalLM, Trainer, TrainingArguments

from finetune.abc import header_length
from finetune.attention import PACKED_SDPA, PackedCollator
from finetune.loops import (
    LOOP_MAX_TOKENS,
    LOOP_MIN_TOKENS,
    LOOP_REPEATS,
    LoopPenaltyTrainer,
    in_a_loop,
    loop_penalty,
    pseudo_loops,
)
from finetune.tokenizer import build_abc_tokenizer

TOKENIZER = build_abc_tokenizer(256)
BLOCK = 256


def check_row(ids: list[int], start: int, period: int, tune: str) -> None:
    """`<s>`, the tune's header, then one block written again and again to the end of the row."""
    assert len(ids) == BLOCK and LOOP_MIN_TOKENS <= period <= LOOP_MAX_TOKENS
    assert ids[0] == TOKENIZER.bos_token_id and TOKENIZER.decode(ids[1:start]) == tune[: header_length(tune)]
    assert all(ids[i] == ids[i - period] for i in range(start + period, BLOCK))
    assert (BLOCK - start) / period >= LOOP_REPEATS + 2 and in_a_loop(TOKENIZER.decode(ids[1:]))
    assert TOKENIZER.decode(ids[start : start + period]) in tune  # a line or bar of the tune itself


@pytest.mark.integration
def test_pseudo_loops_write_a_line_or_bar_of_each_tune_again_and_again_the_same_every_run(corpus):
    tunes = corpus["train"][:400]
    rows = pseudo_loops({"text": tunes}, list(range(len(tunes))), TOKENIZER, BLOCK, seed=3407)
    assert len(rows["loop_ids"]) >= 0.9 * len(tunes)  # nearly every tune has a line or bar that fits
    by_tune = iter(tunes)
    for ids, start, period in zip(rows["loop_ids"], rows["loop_start"], rows["loop_period"]):
        tune = next(t for t in by_tune if TOKENIZER.decode(ids[1:start]) == t[: header_length(t)])
        check_row(ids, start, period, tune)
    assert pseudo_loops({"text": tunes}, list(range(len(tunes))), TOKENIZER, BLOCK, seed=3407) == rows
    other = pseudo_loops({"text": tunes}, list(range(len(tunes))), TOKENIZER, BLOCK, seed=1)
    assert other["loop_ids"] != rows["loop_ids"]
    periods = rows["loop_period"]
    assert min(periods) < 20 < max(periods)  # bars and lines both


@pytest.mark.integration
def test_pseudo_loops_are_made_from_any_mutated_tune_or_none(corpus):
    """2,000 real tunes with 1-6 ABC-significant edits each, as a data file can hold them (`clean_abc` off keeps
    them as read; a decoded file never holds a lone surrogate): never an exception, and every row a true loop."""
    rng = random.Random(0)
    pieces = [piece for piece in ABC_PIECES if piece != "\udcff"]
    tunes = [mutate(corpus["train"][n], rng, pieces, rng.randint(1, 6)) for n in range(2000)]
    rows = pseudo_loops({"text": tunes}, list(range(len(tunes))), TOKENIZER, BLOCK, seed=0)
    assert len(rows["loop_ids"]) > 1000
    for ids, start, period in zip(rows["loop_ids"], rows["loop_start"], rows["loop_period"]):
        assert len(ids) == BLOCK and all(ids[i] == ids[i - period] for i in range(start + period, BLOCK))


def forced_logits(ids: torch.Tensor, chance: list[float], vocabulary: int = 64) -> torch.Tensor:
    """Logits that give token j + 1 the probability chance[j] at position j, the rest shared evenly."""
    rows, width = ids.shape
    probs = torch.zeros(rows, width, vocabulary)
    for j in range(width - 1):
        probs[:, j] = (1 - chance[j]) / (vocabulary - 1)
        probs[torch.arange(rows), j, ids[:, j + 1]] = chance[j]
    return probs.log()


def test_the_penalty_scores_the_copies_past_the_third_and_is_nothing_where_each_halves_the_one_before():
    start, period, copies = 5, 8, 7
    ids = torch.tensor([[1] * start + list(range(10, 10 + period)) * copies])
    width = ids.shape[1]
    starts, periods = torch.tensor([start]), torch.tensor([period])

    def penalty(chance_of_copy):  # the chance the model gives a token of copy c (0 for the first)
        chance = [0.9 if j + 1 < start else chance_of_copy((j + 1 - start) // period) for j in range(width)]
        return loop_penalty(forced_logits(ids, chance), ids, starts, periods).item()

    assert penalty(lambda c: 0.99) == pytest.approx(-math.log(1 - 0.99 / 2), rel=1e-4)  # copying without doubt
    assert penalty(lambda c: 0.9 * 0.5 ** max(0, c - LOOP_REPEATS + 1)) < 1e-4  # copies 1-3 free, then halving
    assert penalty(lambda c: 0.9 * 0.5 ** max(0, c - LOOP_REPEATS)) > 0.1  # halving a copy late: penalised
    assert penalty(lambda c: 0.9 * 0.5 ** max(0, c - LOOP_REPEATS + 2)) < 1e-4  # the third copy is not scored


def tiny_model():
    recipe = json.loads(TINY_RECIPE.read_text())["model_config"]
    config = AutoConfig.for_model("llama", vocab_size=len(TOKENIZER), bos_token_id=TOKENIZER.bos_token_id,
                                  eos_token_id=TOKENIZER.eos_token_id, pad_token_id=TOKENIZER.pad_token_id, **recipe)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation=PACKED_SDPA)


@pytest.mark.parametrize("accumulation", [1, 4])
def test_the_trainer_adds_the_penalty_in_training_only_and_leaves_the_language_model_loss_as_it_was(
    corpus, tmp_path, accumulation
):
    import datasets

    from finetune.args import DataArguments
    from finetune.loops import pseudo_loop_rows
    from finetune.packing import tokenize_and_pack

    tunes = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": corpus["train"][:64]})})
    packed, _ = tokenize_and_pack(tunes, TOKENIZER, BLOCK, DataArguments(), splits=("train",))
    loops = pseudo_loop_rows(tunes["train"], TOKENIZER, BLOCK, DataArguments(), seed=3407)
    batch = PackedCollator()([packed["train"][i] for i in range(4)])
    model = tiny_model()
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, gradient_accumulation_steps=accumulation)
    plain = Trainer(model=model, args=args)
    # an untrained model gives each token about 1/431, so its penalty is small: a large weight makes it count
    trainers = {w: LoopPenaltyTrainer(model=model, args=args, loops=loops, weight=w) for w in (0.0, 1000.0)}
    items = int((batch["labels"][:, 1:] != -100).sum())  # as Trainer counts them over a whole accumulated batch

    def loss(trainer, training=True):
        model.train(training)
        with torch.no_grad():
            return trainer.compute_loss(model, dict(batch), num_items_in_batch=items).item()

    assert loss(trainers[0.0]) == pytest.approx(loss(plain), rel=1e-5)  # the loops join the pass, not the loss
    total = loss(trainers[1000.0])
    penalty = trainers[1000.0].penalties[-1].item()
    assert penalty > 0
    # the language-model loss here is normalised over the accumulated batch, so the penalty is divided as well
    assert total - loss(plain) == pytest.approx(1000.0 * penalty / accumulation, rel=1e-3)
    assert loss(trainers[1000.0], training=False) == pytest.approx(loss(plain, training=False), rel=1e-6)
    for rows, expected in ((0, 2), (1, 1), (3, 3)):  # 0: half the batch's 4 rows
        trainer = LoopPenaltyTrainer(model=model, args=args, loops=loops, weight=1.0, rows=rows)
        with torch.no_grad():
            _, outputs = trainer.compute_loss(model.train(), dict(batch), return_outputs=True, num_items_in_batch=items)
        assert outputs.logits.shape[0] == len(batch["input_ids"]) + expected


@pytest.mark.integration
def test_a_run_with_the_loop_penalty_logs_it_and_names_it_in_its_plan(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, stderr = run_cli(
        [TINY_RECIPE, "--loop_penalty", "1.0", "--loop_penalty_rows", "1", "--max_steps", "4", "--logging_steps", "2",
         "--bf16", "false", "--optim", "adamw_torch", "--output_dir", out], capsys,
    )
    assert code == 0, stderr[-2000:]
    assert "loop penalty 1: " in stdout and "pseudo-loops, one row of them a step" in stdout
    logged = [entry for entry in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in entry]
    assert len(logged) == 2 and all(entry["loop_penalty"] > 0 for entry in logged)
    code, _, stderr = run_cli([TINY_RECIPE, "--loop_penalty", "-1", "--output_dir", tmp_path / "bad"], capsys)
    assert code != 0 and "'loop_penalty' must be 0 (off) or a positive weight" in stderr
    code, _, stderr = run_cli([TINY_RECIPE, "--loop_penalty_rows", "-2", "--output_dir", tmp_path / "bad"], capsys)
    assert code != 0 and "'loop_penalty_rows' must be 0 (half the batch) or a number of rows, got -2" in stderr
    assert not (tmp_path / "bad").exists()
    code, stdout, _ = run_cli([TINY_RECIPE, "--loop_penalty_rows", "2", "--dry_run"], capsys)  # off, as a flag may turn it
    assert code == 0 and "loop penalty off: loop_penalty_rows 2 unused" in stdout
