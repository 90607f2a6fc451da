"""finetune/evaluation/modules: the local `evaluate` modules load from their folders and compute."""

import math

import pytest

from finetune.evaluation.token_metrics import load_metric


def test_metric_modules_load_from_local_paths_and_compute():
    load = load_metric
    assert load("next_token_accuracy").compute(predictions=[1, 2, 3, 4], references=[1, 2, 0, 4]) == {"accuracy": 0.75}
    bits = load("bits_per_char").compute(nll=[math.log(2)] * 4, chars=[1, 1, 2, 0])["bits_per_char"]
    assert bits == pytest.approx(1.0)
    validity = load("abc_validity").compute(predictions=["M:2/4\nL:1/8\nK:D\nABcd|efga|\n", "M:2/4\nL:1/8\nK:D\nAB|cdef|\nef#g|\n"])
    assert validity["validity"] == 0.5
    adherence = load("header_adherence").compute(
        predictions=["M:6/8\nK:D\nABc|[M:2/4]AB|\n", "M:6/8\nK:D\nABc def|\n"], references=["M:6/8\nK:D\n"] * 2
    )
    assert adherence["header_adherence"] == 0.75
    tune = "M:6/8\nK:D\nABc def|gfe dcB|\n"
    novelty = load("abc_novelty").compute(predictions=[tune, "M:6/8\nK:D\nzzz zzz|\n"], training_tunes=[tune, "K:G\nGAB|\n"])
    assert novelty["copy_max"] == pytest.approx(1.0) and novelty["copy_share"] == 0.5 and novelty["diversity"] == pytest.approx(1.0)
