"""Packing: whole tunes in rows of the block size, each tune isolated from its row neighbours."""

import random

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from finetune.abc import header_length
from finetune.packing import IGNORE_INDEX, best_fit_decreasing, fit_to_length, pack_rows, tokenize_batch
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
    tokenizer = build_abc_tokenizer(64)
    tunes = tokenize_batch({"text": ["K:C\nC|\n", "K:D\nd|\n"]}, tokenizer)
    rows = pack_rows(tunes["input_ids"], tunes["labels"], block_size=20, pad_id=0)
    first, second = tunes["input_ids"]
    assert rows["input_ids"] == [first + second + [0] * (20 - len(first) - len(second))]
    assert rows["position_ids"] == [[*range(len(first)), *range(len(second)), *range(20 - len(first) - len(second))]]
    x = IGNORE_INDEX
    assert rows["labels"] == [[x, *first[1:], x, *second[1:]] + [x] * (20 - len(first) - len(second))]


def test_train_on_body_masks_the_header_through_the_k_line():
    tokenizer = build_abc_tokenizer(64)
    text = "M:6/8\nK:D\nABc|\n"
    assert header_length(text) == len("M:6/8\nK:D\n")
    tune = tokenize_batch({"text": [text]}, tokenizer, train_on="body")
    ids, labels = tune["input_ids"][0], tune["labels"][0]
    masked = 1 + len(tokenizer("M:6/8\nK:D\n", add_special_tokens=False)["input_ids"])
    assert labels[:masked] == [IGNORE_INDEX] * masked and labels[masked:] == ids[masked:]
    assert tokenizer.decode(ids[masked:], skip_special_tokens=True) == "ABc|\n"


def test_overlong_policies():
    seq = list(range(10))
    x = IGNORE_INDEX
    assert fit_to_length([seq], [seq], 4, "truncate") == ([[0, 1, 2, 3]], [[0, 1, 2, 3]])
    ids, labels = fit_to_length([seq], [seq], 4, "split")
    assert ids == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert labels == [[x, 1, 2, 3], [x, 5, 6, 7], [x, 9]]
    assert fit_to_length([seq, [1, 2]], [seq, [1, 2]], 4, "drop") == ([[1, 2]], [[1, 2]])


TINY = {
    "llama": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "num_key_value_heads": 2, "max_position_embeddings": 512},
    "gpt2": {"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 512},
}


@pytest.mark.parametrize("model_type", TINY)
def test_a_tune_in_a_packed_row_has_the_logits_it_has_alone(model_type, corpus, tmp_path):
    """Attention never crosses a tune boundary: logits inside a packed row equal the tune's logits alone."""
    tokenizer = build_abc_tokenizer(512)
    shortest = sorted(corpus["validation"][:40], key=len)[:4]
    tunes = tokenize_batch({"text": shortest}, tokenizer)["input_ids"]
    config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), **TINY[model_type])
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    rows = pack_rows(tunes, tunes, block_size=512, pad_id=tokenizer.pad_token_id)
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
