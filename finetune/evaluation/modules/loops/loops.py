"""Loops: the share of tunes caught in a loop, a block of music written again and again back to back.

    metric = evaluate.load("finetune/evaluation/modules/loops")
    metric.compute(predictions=["M:2/4\\nK:D\\n" + "ABcd efga|" * 5, "M:2/4\\nK:D\\nABcd|efga|\\n"])
    # {"loops": 0.5}

A tune is in a loop where a block of 8 to 128 characters starts a copy after 3 back-to-back copies of it: what
LoopLimitLogitsProcessor (`--max_repeats 3`) forbids, counted on characters (for a character tokenizer, its
tokens). Real tunes do this about once in a hundred; a small model's own tunes that run to the token budget
mostly do it (finetune/loops.py, `in_a_loop`).
"""

import datasets
import evaluate

from finetune.loops import in_a_loop


class Loops(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description="predictions: tunes (generated or real).",
            features=datasets.Features({"predictions": datasets.Value("string")}),
        )

    def _compute(self, predictions):
        return {"loops": sum(map(in_a_loop, predictions)) / len(predictions) if predictions else float("nan")}
