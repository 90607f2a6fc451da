"""ABC validity and bar-duration consistency of tunes, by finetune.abc.check (abc2midi, else strict Python).

    metric = evaluate.load("finetune/evaluation/modules/abc_validity")
    metric.compute(predictions=["M:2/4\\nL:1/8\\nK:D\\nABcd|efga|\\n"])
    # {"validity": 1.0, "bar_consistency": 1.0, "bars_total": 2, "checker": "abc2midi"}

validity: share of tunes with no error (syntax, header fields, broken bars).
bar_consistency: share of bars whose duration matches M:/L: (pickups and split bars around repeats allowed).
"""

import datasets
import evaluate

from finetune.abc.check import check_tunes, summarize


class AbcValidity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description="predictions: tunes as ABC text. Optional: checker='auto'|'abc2midi'|'python'.",
            features=datasets.Features({"predictions": datasets.Value("string")}),
        )

    def _compute(self, predictions, checker="auto"):
        results = check_tunes(list(predictions), checker)
        return {**summarize(results), "checker": results[0]["checker"] if results else checker}
