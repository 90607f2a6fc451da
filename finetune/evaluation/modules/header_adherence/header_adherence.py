"""Header adherence: do the header fields a tune was prompted with stay in force to its end?

    metric = evaluate.load("finetune/evaluation/modules/header_adherence")
    metric.compute(predictions=["M:6/8\\nK:D\\nABc|[M:2/4]AB|\\n"], references=["M:6/8\\nK:D\\n"])
    # {"header_adherence": 0.5}: K:D held, M:6/8 was changed

A prompted field is kept when no later field line or inline field sets it to another value. The score is
the mean over tunes of the share of their prompted fields kept.
"""

import re

import datasets
import evaluate

FIELD = re.compile(r"^([A-Za-z]):(.*)$")
INLINE_FIELD = re.compile(r"\[([A-Za-z]):([^\]\n]*)\]")


def _normal(value):
    return re.sub(r"\s+", "", value)


def kept_share(tune, prompt):
    prompted = {m.group(1): _normal(m.group(2)) for m in map(FIELD.match, prompt.split("\n")) if m}
    if not prompted:
        return float("nan")
    rest = tune[len(prompt):] if tune.startswith(prompt) else tune
    changed = set()
    for line in rest.split("\n"):
        found = [FIELD.match(line)] if FIELD.match(line) else []
        found += list(INLINE_FIELD.finditer(line))
        for m in found:
            letter = m.group(1)
            if letter in prompted and _normal(m.group(2)) != prompted[letter]:
                changed.add(letter)
    return 1 - len(changed) / len(prompted)


class HeaderAdherence(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description="predictions: generated tunes (prompt included); references: the prompts.",
            features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references):
        shares = [s for s in (kept_share(t, p) for t, p in zip(predictions, references)) if s == s]
        return {"header_adherence": sum(shares) / len(shares) if shares else float("nan")}
