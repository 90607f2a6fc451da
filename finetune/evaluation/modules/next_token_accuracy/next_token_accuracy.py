"""Next-token accuracy: the share of predicted tokens that equal the true next token.

    metric = evaluate.load("finetune/evaluation/modules/next_token_accuracy")
    metric.compute(predictions=[5, 7, 9], references=[5, 7, 8])  # {"accuracy": 0.667}

Pass only the positions that count (labels of -100 already removed), as `finetune.evaluation.token_metrics` does for
`Trainer(compute_metrics=...)`.
"""

import datasets
import evaluate
import numpy as np


class NextTokenAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description="predictions: predicted token ids; references: true next-token ids (same length).",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        predictions, references = np.asarray(predictions), np.asarray(references)
        return {"accuracy": float((predictions == references).mean()) if len(references) else float("nan")}
