"""Packing: whole tunes in rows of the block size, each tune isolated from its row neighbours."""

import random

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from finetune.packing import IGNORE_INDEX, best_fit_decreasing, fit_to_length, pack_rows
from finetune.tokenizer import build_abc_tokenizer


def test_best_fit_decreasing_places_every_item_once_within_capacity():
    rng = random.Random(0)
    lengths = [rng.randint(1, 100) for _ in range(2000)]
    bins = best_fit_decreasing(lengths, 128)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 128 for b in bins)
    # Near the lower bound: the total length divided by the capacity.
    assert len(bins) <= 1.05 * sum(lengths) / 128 + 1


def test_rows_restart_positions_and_mask_each_tune_start_and_padding():
    rows = pack_rows([[1, 5, 6, 2], [1, 7, 2]], block_size=10, pad_id=0)
    assert rows["input_ids"] == [[1, 5, 6, 2, 1, 7, 2, 0, 0, 0]]
    assert rows["position_ids"] == [[0, 1, 2, 3, 0, 1, 2, 0, 1, 2]]
    x = IGNORE_INDEX
    assert rows["labels"] == [[x, 5, 6, 2, x, 7, 2, x, x, x]]


def test_overlong_policies():
    seq = list(range(10))
    assert fit_to_length([seq], 4, "truncate") == [[0, 1, 2, 3]]
    assert fit_to_length([seq], 4, "split") == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert fit_to_length([seq, [1, 2]], 4, "drop") == [[1, 2]]


TINY = {
    "llama": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "num_key_value_heads": 2, "max_position_embeddings": 512},
    "gpt2": {"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 512},
}


@pytest.mark.parametrize("model_type", TINY)
def test_a_tune_in_a_packed_row_has_the_logits_it_has_alone(model_type, corpus, tmp_path):
    """Attention never crosses a tune boundary: logits inside a packed row equal the tune's logits alone."""
    tokenizer = build_abc_tokenizer(512)
    tunes = [tokenizer(t)["input_ids"] + [tokenizer.eos_token_id] for t in corpus["validation"][:40]]
    tunes = sorted(tunes, key=len)[:4]
    config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), **TINY[model_type])
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    rows = pack_rows(tunes, block_size=512, pad_id=tokenizer.pad_token_id)
    assert len(rows["input_ids"]) == 1  # all four share one row
    with torch.no_grad():
        packed = model(
            input_ids=torch.tensor(rows["input_ids"]), position_ids=torch.tensor(rows["position_ids"]), use_cache=False
        ).logits[0]
        start = 0
        for ids in sorted(tunes, key=len, reverse=True):  # best-fit-decreasing order
            alone = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0]
            torch.testing.assert_close(packed[start : start + len(ids)], alone, atol=1e-5, rtol=1e-4)
            start += len(ids)
        # The check can fail: without the position restarts, the same row mixes tunes.
        mixed = model(input_ids=torch.tensor(rows["input_ids"]), use_cache=False).logits[0]
        first = len(max(tunes, key=len))
        assert not torch.allclose(mixed[first : first + 5], packed[first : first + 5], atol=1e-3)
