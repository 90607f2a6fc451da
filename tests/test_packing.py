"""Packing: whole tunes in rows of the block size, each tune isolated from its row neighbours."""

import random

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from finetune.abc import header_length
from finetune.packing import (
    IGNORE_INDEX,
    best_fit_decreasing,
    fit_to_length,
    labels_of,
    pack_rows,
    pack_window,
    tokenize_batch,
)
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
    rows = pack_window(tunes, block_size=20, pad_id=0, policy="truncate")
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
    ids = tune["input_ids"][0]
    labels = labels_of(ids, tune["masked"][0])
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
POSITIONS_128 = {"llama": {"max_position_embeddings": 128}, "gpt2": {"n_positions": 128}}


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


def packed_tunes(rows) -> list[list[int]]:
    """The token runs of each row, cut where position_ids restart, padding left out."""
    tunes = []
    for ids, positions, labels in zip(rows["input_ids"], rows["position_ids"], rows["labels"]):
        starts = [i for i, p in enumerate(positions) if p == 0] + [len(ids)]
        for a, b in zip(starts, starts[1:]):
            if any(label != IGNORE_INDEX for label in labels[a:b]):
                tunes.append(ids[a:b])
    return tunes


@pytest.mark.integration
def test_windowed_packing_keeps_every_tune_once_and_its_statistics_exact(monkeypatch, tmp_path):
    """Packing in windows of tunes: every tune lands once, whole; the statistics read from numeric columns
    equal those counted from the token lists; padding stays near a single window's; workers change nothing."""
    import datasets

    from finetune import packing
    from finetune.args import DataArguments
    from finetune.data import clean_splits, load_raw_splits

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path))
    args = DataArguments(max_train_samples=3000, max_eval_samples=300)
    tunes, _ = clean_splits(load_raw_splits(args), args)
    tokenizer = build_abc_tokenizer(256)
    whole, whole_stats = packing.tokenize_and_pack(tunes, tokenizer, 256, args)
    monkeypatch.setattr(packing, "PACK_WINDOW", 500)
    windowed, stats = packing.tokenize_and_pack(tunes, tokenizer, 256, args)
    two = DataArguments(max_train_samples=3000, max_eval_samples=300, preprocessing_num_workers=2)
    parallel, _ = packing.tokenize_and_pack(tunes, tokenizer, 256, two)
    assert parallel["train"][:] == windowed["train"][:]

    train = windowed["train"][:]
    assert {len(row) for name in train for row in train[name]} == {256}
    expected = tokenize_batch({"text": tunes["train"]["text"]}, tokenizer)["input_ids"]
    assert sorted(packed_tunes(train)) == sorted(ids[:256] for ids in expected)
    lengths = [len(ids) for ids in expected]
    assert stats["train"]["tunes"] == len(expected) and stats["train"]["tokens"] == sum(lengths)
    assert stats["train"]["overlong_tunes"] == sum(n > 256 for n in lengths)
    assert stats["train"]["tokens_in_rows"] == sum(min(n, 256) for n in lengths)
    assert stats["train"]["chars"] == sum(len(t) for t in tunes["train"]["text"])
    # Six windows of 500 tunes against one of 3000: at most a few rows more (the last, part-filled ones).
    assert whole_stats["train"]["rows"] <= stats["train"]["rows"] <= whole_stats["train"]["rows"] + 6
    assert isinstance(windowed["train"], datasets.Dataset)


def several_packed_rows(corpus, tokenizer, block_size=128, tunes=14):
    """A batch of a few packed rows of real tunes of varied lengths, as the collator gives it to the model."""
    from finetune.attention import PackedCollator

    texts = sorted(corpus["validation"][: tunes * 10], key=len)[::10]
    rows = pack_window(tokenize_batch({"text": texts}, tokenizer), block_size=block_size,
                       pad_id=tokenizer.pad_token_id, policy="truncate")
    batch = PackedCollator(varlen_kwargs=True)([{key: rows[key][i] for key in rows} for i in range(len(rows["input_ids"]))])
    assert len(batch["input_ids"]) >= 3 and len(batch["cu_seq_lens_q"]) - 1 > len(batch["input_ids"])
    return batch


def summed_loss(logits, labels):
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), reduction="sum")


@pytest.mark.parametrize("model_type", TINY)
def test_packed_attention_gives_every_tune_its_logits_and_gradients_alone(model_type, corpus, tmp_path):
    """sdpa_packed over a batch of several packed rows: each tune's logits, and the gradient of the summed
    loss, equal those of the tunes run one by one (fp32); the stock path with no tune boundaries mixes them."""
    import finetune.attention  # noqa: F401  (registers sdpa_packed)

    tokenizer = build_abc_tokenizer(128)
    batch = several_packed_rows(corpus, tokenizer)
    config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), **{**TINY[model_type], **POSITIONS_128[model_type]})
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="sdpa_packed").eval()
    params = [p for p in model.parameters() if p.requires_grad]

    logits = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits
    packed_grads = torch.autograd.grad(summed_loss(logits, batch["labels"]), params)
    alone_loss, checked = 0.0, 0
    cu = batch["cu_seq_lens_q"].tolist()
    flat_ids, flat_labels = batch["input_ids"].flatten(), batch["labels"].flatten()
    flat_logits = logits.detach().flatten(0, 1)
    for start, end in zip(cu, cu[1:]):
        if (flat_labels[start:end] == IGNORE_INDEX).all():
            continue  # padding
        alone = model(input_ids=flat_ids[None, start:end], use_cache=False).logits
        torch.testing.assert_close(flat_logits[start:end], alone[0], atol=1e-5, rtol=1e-4)
        alone_loss = alone_loss + summed_loss(alone, flat_labels[None, start:end])
        checked += 1
    assert checked >= 10
    for packed, alone in zip(packed_grads, torch.autograd.grad(alone_loss, params)):
        torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-4)
    # The check can fail: without the position restarts, the same rows mix tunes...
    mixed = model(input_ids=batch["input_ids"], use_cache=False).logits
    assert not torch.allclose(mixed, logits, atol=1e-3)
    # ... and then each row is one causal sequence, exactly as stock SDPA reads it, never the batch as one.
    model.set_attn_implementation("sdpa")
    torch.testing.assert_close(mixed, model(input_ids=batch["input_ids"], use_cache=False).logits, atol=1e-5, rtol=1e-4)


def test_packed_attention_keeps_cudnn_out_of_its_sdpa_calls(corpus, monkeypatch):
    """Every SDPA call of sdpa_packed runs with cuDNN's attention disabled (its plans are per shape, and the
    groups change shape call to call: finetune/attention.py), and the setting ends with the call."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    import finetune.attention as attention

    seen = []

    def recording(*args, **kwargs):
        seen.append(torch.backends.cuda.cudnn_sdp_enabled())
        return sdpa_attention_forward(*args, **kwargs)

    monkeypatch.setattr(attention, "sdpa_attention_forward", recording)
    tokenizer = build_abc_tokenizer(128)
    batch = several_packed_rows(corpus, tokenizer)
    config = AutoConfig.for_model("llama", vocab_size=len(tokenizer), **{**TINY["llama"], **POSITIONS_128["llama"]})
    model = AutoModelForCausalLM.from_config(config)
    model.set_attn_implementation(attention.PACKED_SDPA)
    every = [SDPBackend.MATH, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]
    with sdpa_kernel(every):  # cuDNN on around the call, whatever this torch build's default
        assert torch.backends.cuda.cudnn_sdp_enabled()
        model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False)
        assert len(seen) > config.num_hidden_layers and not any(seen)
        assert torch.backends.cuda.cudnn_sdp_enabled()


def test_the_collators_varlen_kwargs_are_transformers_own_for_the_rows_flattened(corpus):
    """What flash_attention_2 gets for several rows is what prepare_fa_kwargs_from_position_ids gives for the
    same rows as one flattened sequence (flash's varlen path flattens the batch the same way)."""
    from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

    batch = several_packed_rows(corpus, build_abc_tokenizer(128))
    (cu_q, cu_k), (max_q, max_k) = prepare_fa_kwargs_from_position_ids(batch["position_ids"].reshape(1, -1))
    assert torch.equal(batch["cu_seq_lens_q"], cu_q) and torch.equal(batch["cu_seq_lens_k"], cu_k)
    assert batch["max_length_q"] == int(max_q) and batch["max_length_k"] == int(max_k)
    assert batch["cu_seq_lens_q"].dtype == torch.int32 and isinstance(batch["max_length_q"], int)


CUDA_IMPLEMENTATIONS = {"sdpa_packed": torch.float32, "sdpa": torch.float32, "flex_attention": torch.float32,
                        "flash_attention_2": torch.bfloat16}  # flash-attention runs in 16 bits only


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("implementation", CUDA_IMPLEMENTATIONS)
def test_packed_rows_stay_isolated_on_cuda_at_batch_size_4(implementation, corpus, tmp_path):
    """On CUDA, four packed rows at once: every implementation gives each tune its logits alone (flash through
    the collator's varlen kwargs, which position_ids alone give it only for a batch of one row)."""
    import finetune.attention  # noqa: F401  (registers sdpa_packed)

    if implementation == "flash_attention_2":
        pytest.importorskip("flash_attn")
    dtype = CUDA_IMPLEMENTATIONS[implementation]
    tokenizer = build_abc_tokenizer(128)
    batch = several_packed_rows(corpus, tokenizer, tunes=24)
    rows = len(batch["input_ids"])
    assert rows >= 4
    from finetune.attention import PackedCollator

    batch = PackedCollator(varlen_kwargs=True)([{k: batch[k][i] for k in ("input_ids", "labels", "position_ids")} for i in range(4)])
    config = AutoConfig.for_model("llama", vocab_size=len(tokenizer), **{**TINY["llama"], **POSITIONS_128["llama"]})
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation=implementation, dtype=dtype).cuda().eval()
    inputs = {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        logits = model(**inputs, use_cache=False).logits.flatten(0, 1).float()
        cu = batch["cu_seq_lens_q"].tolist()
        flat_ids = inputs["input_ids"].flatten()
        tolerance = {"atol": 1e-4, "rtol": 1e-3} if dtype == torch.float32 else {"atol": 3e-2, "rtol": 3e-2}
        for start, end in zip(cu, cu[1:]):
            alone = model(input_ids=flat_ids[None, start:end], use_cache=False).logits[0].float()
            torch.testing.assert_close(logits[start:end], alone, **tolerance)
