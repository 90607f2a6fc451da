"""The character tokenizer: lossless for any Unicode text, one token per ABC character, and compatible with
checkpoints saved by its first version (tests/fixtures/char_tokenizer_v1, 175 tokens, no byte fallback)."""

import random

import numpy as np
import pytest
import torch
from conftest import REPO
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from finetune.evaluation.token_metrics import chars_per_token
from finetune.tokenizer import build_abc_tokenizer

FIRST_VERSION = REPO / "tests" / "fixtures" / "char_tokenizer_v1"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """Built, saved and reloaded through AutoTokenizer, as every checkpoint is read back."""
    path = tmp_path_factory.mktemp("tokenizer")
    build_abc_tokenizer(model_max_length=1024).save_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


def random_unicode(rng: random.Random, length: int) -> str:
    """Text drawn from every plane that real tune books and models touch, surrogates excluded."""
    ranges = [(0x00, 0x7F), (0x80, 0x24F), (0x300, 0x36F), (0x370, 0x52F), (0x3040, 0x30FF), (0x4E00, 0x9FFF),
              (0xAC00, 0xD7A3), (0xE000, 0xF8FF), (0xFE00, 0xFFFF), (0x1F300, 0x1FAFF), (0x20000, 0x2A6DF), (0x10FFF0, 0x10FFFF)]
    out = []
    for _ in range(length):
        low, high = rng.choice(ranges)
        out.append(chr(rng.randint(low, high)))
    return "".join(out)


def test_any_unicode_string_round_trips(tokenizer):
    """decode(encode(s)) == s for 2,000 random strings: emoji, CJK, combining marks, controls, private use."""
    rng = random.Random(0)
    texts = [random_unicode(rng, rng.randint(0, 60)) for _ in range(2000)]
    texts += ["T:Reel — çé 茉莉花 🎻 Łódź\nK:D\n|:abc:|]", "e\u0301\u0308 \U0001F3BB\u200d\u2640\ufe0f", "\x00\t\r\n"]
    encoded = tokenizer(texts)["input_ids"]
    assert tokenizer.unk_token_id not in {i for ids in encoded for i in ids}
    assert tokenizer.batch_decode(encoded, skip_special_tokens=True) == texts
    # One token per character the alphabet holds, the UTF-8 bytes of any other.
    assert len(tokenizer("Łódź")["input_ids"]) == 1 + 2 + 1 + 1 + 2  # <s>, Ł as 2 bytes, ó, d, ź as 2 bytes


@pytest.mark.integration
def test_corpus_encodes_one_token_per_abc_character_with_the_ids_of_the_first_version(corpus, tokenizer):
    """Every corpus tune round-trips, needs no byte token, and gets the very ids the 175-token version gave it."""
    first = AutoTokenizer.from_pretrained(FIRST_VERSION)
    every = [t for texts in corpus.values() for t in texts]
    encoded = tokenizer(every)["input_ids"]
    assert encoded == first(every)["input_ids"]
    assert max(i for ids in encoded for i in ids) < len(first)  # no byte token: sequence lengths are unchanged
    assert tokenizer.batch_decode(encoded, skip_special_tokens=True) == every
    # Notations are single tokens, so a tune is shorter in tokens than in characters.
    assert sum(len(ids) - 1 for ids in encoded) < sum(map(len, every))  # less the leading <s>


def test_a_checkpoint_saved_with_the_first_version_still_loads_and_generates(tmp_path):
    """A model of 175 embeddings and its saved first-version tokenizer: load_checkpoint and sampling work."""
    from finetune.generation import SampleArguments, generate_tunes
    from finetune.model import load_checkpoint

    first = AutoTokenizer.from_pretrained(FIRST_VERSION)
    first.save_pretrained(tmp_path)
    config = LlamaConfig(vocab_size=len(first), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=64, bos_token_id=first.bos_token_id,
                         eos_token_id=first.eos_token_id, pad_token_id=first.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    model, tokenizer = load_checkpoint(str(tmp_path))
    samples = generate_tunes(model, tokenizer, ["M:6/8\nK:D\n"], SampleArguments(num_samples=1, max_new_tokens=20))
    assert samples[0].text.startswith("M:6/8\nK:D\n") and samples[0].new_tokens > 0


def test_bits_per_char_counts_a_character_spelt_in_bytes_once(tokenizer):
    """A UTF-8 lead byte spells one character and a continuation byte none, so bits per char stay per character."""
    chars = chars_per_token(tokenizer)
    for text in ["茉莉花 🎻", "Łódź — e\u0301", "K:D\n|:abc:|]"]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert chars[ids].sum() == len(text), text
    assert np.all(chars[tokenizer.all_special_ids] == 0)


@pytest.mark.integration
def test_learned_merges_keep_the_character_ids_shorten_tunes_and_stay_lossless(corpus, tmp_path):
    """`tokenizer_merges`: merges learned from the training tunes (the same every time) are appended to the character
    tokenizer, whose ids stay; held-out tunes take about half the tokens, and any text still round-trips."""
    from finetune.tokenizer import learn_merges

    merges = learn_merges(corpus["train"], 256)
    assert merges == learn_merges(corpus["train"], 256) and len(merges) == 256
    build_abc_tokenizer(model_max_length=1024, merges=merges).save_pretrained(tmp_path)
    learned, characters = AutoTokenizer.from_pretrained(tmp_path), build_abc_tokenizer(model_max_length=1024)
    fixed = characters.get_vocab()
    assert {t: i for t, i in learned.get_vocab().items() if i < len(fixed)} == fixed
    assert len(fixed) + 200 < len(learned) <= len(fixed) + 256
    assert not any("\n" in token and token != "\n" for token in learned.get_vocab())  # no token spans a line end
    held_out = list(corpus["validation"])
    encoded = learned(held_out)["input_ids"]
    assert learned.batch_decode(encoded, skip_special_tokens=True) == held_out
    assert sum(map(len, held_out)) > 1.8 * sum(len(ids) - 1 for ids in encoded)  # 1.98 characters a token
    rng = random.Random(1)
    texts = [random_unicode(rng, rng.randint(0, 60)) for _ in range(500)] + ["T:Reel — çé 茉莉花 🎻\n|:abc:|]"]
    assert learned.batch_decode(learned(texts)["input_ids"], skip_special_tokens=True) == texts
    chars = chars_per_token(learned)
    for text in held_out[:50] + texts[:50]:
        assert chars[learned(text, add_special_tokens=False)["input_ids"]].sum() == len(text)
