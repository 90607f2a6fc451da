"""Bits per character: cross-entropy per character of tune text, comparable across tokenizers.

A character-level model and a BPE model see the same tunes cut into different numbers of tokens, so
their losses per token do not compare; per character they do (folk-rnn, Text-to-Music):

    bits per char = sum of per-token losses (nats) / characters those tokens spell / ln 2

    metric = evaluate.load("finetune/evaluation/modules/bits_per_char")
    metric.compute(nll=[0.7, 1.4], chars=[1, 3])  # {"bits_per_char": 0.757}

`nll` is the loss of each predicted token in nats, `chars` the characters of tune text it spells
(0 for special tokens such as end-of-tune, whose loss still counts).
"""

import math

import datasets
import evaluate
import numpy as np


class BitsPerChar(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description="nll: loss of each predicted token in nats; chars: characters of text that token spells.",
            features=datasets.Features({"nll": datasets.Value("float64"), "chars": datasets.Value("int64")}),
        )

    def _compute(self, nll, chars):
        characters = int(np.sum(chars))
        if characters == 0:
            return {"bits_per_char": float("nan")}
        return {"bits_per_char": float(np.sum(nll)) / characters / math.log(2)}
