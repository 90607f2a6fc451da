"""The character-level ABC tokenizer, built with `tokenizers` and saved in the standard HF format.

Text-to-Music (Wu & Sun, 2023) trained on ABC with "character-level tokenization (but added some common
notations)" and a vocabulary of 164. We do the same: one token per character, plus single tokens for the
bar-line and repeat notations that are one symbol to a musician. The alphabet is fixed (not learned from
data) so that a tokenizer saved today and a checkpoint trained next year agree on every id.

Any other character is spelled as its UTF-8 bytes, `<0xE8><0x8C><0x89>`, as Llama-family tokenizers do
(byte fallback), so `decode(encode(text)) == text` for every Unicode string: titles in Polish, Czech or
Chinese survive. The byte tokens come after the 175 tokens of the first version, whose ids are unchanged,
so a model trained with that version reads the same ids from this one.

`tokenizer_merges` (a recipe key) adds BPE merges learned from the training tunes after those ids (`learn_merges`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]

# Repeats and bar lines, longest first so the pre-tokenizer prefers them over their single characters.
NOTATIONS = [":|]", "[|", "|]", "||", "|:", ":|", "::", "|1", "|2", ":|1", ":|2"]
NOTATIONS.sort(key=len, reverse=True)

# Printable ASCII and the newline carry ABC itself; Latin-1 letters carry titles and rhythm names
# (Essen's "geistliche, religiöse Lieder").
ALPHABET = ["\n"] + [chr(c) for c in range(0x20, 0x7F)] + [chr(c) for c in range(0xC0, 0x100)]
# The byte-fallback tokens, named as `tokenizers`' ByteFallback decoder and Llama's vocabularies name them.
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]
BYTE_TOKEN = re.compile(r"^<0x([0-9A-F]{2})>$")


def notation_merges() -> list[tuple[str, str]]:
    """BPE merges that build each notation left to right from its characters (`:|1` = `:|` + `1`).

    The pre-tokenizer has already cut the text into single characters and whole notations, so these merges
    can only ever join the characters of one notation. Longest notations first: `:|]` must merge `:|`
    before `|]` can take its bar.
    """
    merges = []
    for notation in NOTATIONS:
        for end in range(2, len(notation) + 1):
            pair = (notation[: end - 1], notation[end - 1])
            if pair not in merges:
                merges.append(pair)
    return merges


# With learned merges a token may span anything but a line end: a line is a unit of ABC (a field, a line of music).
LINE_PIECES = Regex(r"\n|[^\n]+")


def learn_merges(texts: Iterable[str], count: int) -> list[tuple[str, str]]:
    """`count` BPE merges learned from `texts` over the ABC alphabet (pieces never cross a line end)."""
    learner = Tokenizer(models.BPE(unk_token=UNK))
    learner.pre_tokenizer = pre_tokenizers.Split(LINE_PIECES, behavior="isolated")
    trainer = trainers.BpeTrainer(
        vocab_size=len(SPECIAL_TOKENS) + len(ALPHABET) + count,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=ALPHABET,
        limit_alphabet=len(ALPHABET),
        show_progress=False,
    )
    learner.train_from_iterator(texts, trainer)
    merges = json.loads(learner.to_str())["model"]["merges"]
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in merges]


def build_abc_tokenizer(model_max_length: int, merges: list[tuple[str, str]] = ()) -> PreTrainedTokenizerFast:
    """A fresh ABC tokenizer; `tokenizer(text)` prepends `<s>`, which is how every training tune starts.

    With `merges` (from `learn_merges`), the tokens they make follow the fixed ones, whose ids stay as they are.
    """
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + NOTATIONS + ALPHABET + BYTE_TOKENS)}
    all_merges = notation_merges()
    for left, right in merges:
        if left in vocab and right in vocab and (left, right) not in all_merges:
            all_merges.append((left, right))
            vocab.setdefault(left + right, len(vocab))
    tokenizer = Tokenizer(models.BPE(vocab, all_merges, unk_token=UNK, byte_fallback=True))
    notations = "|".join(re.escape(n) for n in NOTATIONS)
    # `[\s\S]` and not `.`: the regex engine (Oniguruma) does not let `.` match a newline here.
    pieces = LINE_PIECES if merges else Regex(rf"{notations}|[\s\S]")
    tokenizer.pre_tokenizer = pre_tokenizers.Split(pieces, behavior="isolated")
    tokenizer.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
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
