"""Copying and diversity of generated tunes, by character 4-gram cosine similarity of their music.

    metric = evaluate.load("finetune/evaluation/modules/abc_novelty")
    metric.compute(predictions=generated_tunes, training_tunes=training_tunes)
    # {"copy_max": ..., "copy_share": ..., "copy_mean": ..., "diversity": ...}

copy_max: the highest similarity of any generated tune to its nearest training tune (1.0: a copy).
copy_share: share of generated tunes whose nearest training tune is above `threshold` (default 0.85).
copy_mean: mean nearest-neighbour similarity.
diversity: 1 - mean similarity between different generated tunes.
The training-tune index is built once per set of training tunes and reused while this module is loaded.
"""

import hashlib

import datasets
import evaluate

from finetune.evaluation.similarity import NgramIndex, diversity, nearest_similarity


class AbcNovelty(evaluate.Metric):
    _index_key, _index = None, None

    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description="predictions: generated tunes. Keyword arguments: training_tunes (required), threshold.",
            features=datasets.Features({"predictions": datasets.Value("string")}),
        )

    def _training_index(self, training_tunes):
        key = hashlib.sha256("\0".join(training_tunes).encode("utf-8")).hexdigest()
        if key != self._index_key:
            self._index_key, self._index = key, NgramIndex(list(training_tunes))
        return self._index

    def _compute(self, predictions, training_tunes, threshold=0.85):
        nearest = nearest_similarity(list(predictions), self._training_index(training_tunes))
        return {
            "copy_max": float(nearest.max()) if len(nearest) else float("nan"),
            "copy_share": float((nearest > threshold).mean()) if len(nearest) else float("nan"),
            "copy_mean": float(nearest.mean()) if len(nearest) else float("nan"),
            "diversity": diversity(list(predictions)),
        }
