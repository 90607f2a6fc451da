"""Next-token accuracy and bits per character for `Trainer(compute_metrics=...)`, during training and after.

The numbers come from the local `evaluate` modules in modules/ (no hub needed); this file only feeds them.
`preprocess_logits_for_metrics` keeps two numbers per position instead of the [batch, length, vocab]
logits, so evaluation memory does not grow with the vocabulary.
"""

from __future__ import annotations

from pathlib import Path

import evaluate
import numpy as np
import torch
from transformers import EvalPrediction, PreTrainedTokenizerBase

from ..packing import IGNORE_INDEX
from ..tokenizer import BYTE_TOKEN

MODULES_DIR = Path(__file__).resolve().parent / "modules"


def load_metric(name: str) -> evaluate.EvaluationModule:
    """A metric of modules/ by name; kept in memory so that processes of one run never share a cache file."""
    return evaluate.load(str(MODULES_DIR / name), keep_in_memory=True)


def chars_per_token(tokenizer: PreTrainedTokenizerBase) -> np.ndarray:
    """How many characters of tune text each token id spells; special tokens spell none.

    A byte-fallback token (`<0xE8>`, as Llama-family tokenizers and ours name them) spells one character if
    it opens a UTF-8 sequence (or is ASCII) and none if it continues one, so a character spelt in bytes
    counts once.
    """
    special = set(tokenizer.all_special_ids)
    counts = []
    for token_id, token in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
        byte = BYTE_TOKEN.match(token or "")
        if token_id in special:
            counts.append(0)
        elif byte:
            counts.append(0 if 0x80 <= int(byte.group(1), 16) < 0xC0 else 1)
        else:
            counts.append(len(tokenizer.decode([token_id])))
    return np.array(counts)


def preprocess_logits_for_metrics(logits: torch.Tensor | tuple, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted next token, loss of the true next token in nats) at every position but the last."""
    if isinstance(logits, tuple):
        logits = logits[0]
    logits, targets = logits[:, :-1].float(), labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none")
    return logits.argmax(-1), nll


class TokenMetrics:
    """`compute_metrics` giving `accuracy` (next token) and `bits_per_char` over the positions with labels."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.chars = chars_per_token(tokenizer)
        self.accuracy = load_metric("next_token_accuracy")
        self.bits_per_char = load_metric("bits_per_char")

    def __call__(self, eval_pred: EvalPrediction) -> dict:
        predicted, nll = eval_pred.predictions
        targets = eval_pred.label_ids[:, 1:]
        counted = targets != IGNORE_INDEX
        targets = targets[counted]
        return {
            **self.accuracy.compute(predictions=predicted[counted], references=targets),
            **self.bits_per_char.compute(nll=nll[counted], chars=self.chars[targets]),
        }
