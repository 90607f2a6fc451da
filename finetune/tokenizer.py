"""The character-level ABC tokenizer, built with `tokenizers` and saved in the standard HF format.

Text-to-Music (Wu & Sun, 2023) trained on ABC with "character-level tokenization (but added some common
notations)" and a vocabulary of 164. We do the same: one token per character, plus single tokens for the
bar-line and repeat notations that are one symbol to a musician. The alphabet is fixed (not learned from
data) so that a tokenizer saved today and a checkpoint trained next year agree on every id.
"""

from __future__ import annotations

import re

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]

# Repeats and bar lines, longest first so the pre-tokenizer prefers them over their single characters.
NOTATIONS = [":|]", "[|", "|]", "||", "|:", ":|", "::", "|1", "|2", ":|1", ":|2"]
NOTATIONS.sort(key=len, reverse=True)

# Printable ASCII and the newline carry ABC itself; Latin-1 letters carry titles and rhythm names
# (Essen's "geistliche, religiöse Lieder").
ALPHABET = ["\n"] + [chr(c) for c in range(0x20, 0x7F)] + [chr(c) for c in range(0xC0, 0x100)]


def build_abc_tokenizer(model_max_length: int) -> PreTrainedTokenizerFast:
    """A fresh ABC tokenizer; `tokenizer(text)` prepends `<s>`, which is how every training tune starts."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + NOTATIONS + ALPHABET)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    notations = "|".join(re.escape(n) for n in NOTATIONS)
    # `[\s\S]` and not `.`: the regex engine (Oniguruma) does not let `.` match a newline here.
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(rf"{notations}|[\s\S]"), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, vocab[BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
