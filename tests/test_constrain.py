"""Constrained sampling: the MetreLogitsProcessor refuses exactly the tokens that would break syntax or the metre,
decided on the one ABC reader; and through generate it makes an untrained model write tunes the checker reads."""

import torch

from finetune.abc.check import analyse
from finetune.abc.constrain import MetreLogitsProcessor
from finetune.tokenizer import build_abc_tokenizer

TOKENIZER = build_abc_tokenizer(256)


def allowed_after(text: str, max_new_tokens: int = 100) -> set[str]:
    """The token texts the processor keeps after `text`, when every token is equally likely."""
    processor = MetreLogitsProcessor(TOKENIZER, max_new_tokens=max_new_tokens, keep=len(TOKENIZER))
    ids = torch.tensor([TOKENIZER(text)["input_ids"]])
    scores = processor(ids, torch.zeros(1, len(TOKENIZER)))
    kept = torch.isfinite(scores[0]).nonzero().flatten().tolist()
    return {"</s>" if i == TOKENIZER.eos_token_id else TOKENIZER.decode([i]) for i in kept}


HEADER = "M:6/8\nL:1/8\nK:D\n"


def test_a_full_bar_must_close_and_an_overlong_note_is_refused():
    full = allowed_after(HEADER + "A|d2d dcd")
    assert "|" in full and ":|" in full and "|]" in full
    assert not {"a", "z", "A"} & full  # a 7th unit would overflow 6/8
    assert "|" in allowed_after(HEADER + "A|d2d dc d")  # `d` fills the bar
    too_long = allowed_after(HEADER + "A|d2d dc d2")  # `d2` would overflow as it stands, `d2/` would not
    assert " " not in too_long and "|" not in too_long and "/" in too_long


def test_a_short_bar_closes_only_as_a_pickup_or_around_a_repeat():
    assert "|" in allowed_after(HEADER + "A")  # the opening pickup
    short = allowed_after(HEADER + "A|d2d dcd|d3 ")
    assert ":|" in short  # a repeat may split a bar, and the next bar completes it
    assert not {"a", " "} & allowed_after(HEADER + "A|d2d dcd|d3 |")  # `|` must grow into `||`, `|]` or `|:`
    assert allowed_after(HEADER + "A|d2d dcd|d3 :|") >= {"d", "e"}  # the split bar's other half
    assert "|" not in allowed_after(HEADER + "A|d2d dcd|d3 :|d2")  # ... lasts exactly 3


def test_the_prompted_metre_and_key_cannot_change_and_no_comment_or_field_line_starts():
    assert "%" not in allowed_after(HEADER + "A|d2d dcd|\n")
    assert ":" not in allowed_after(HEADER + "A|d2d dcd|\nM")  # `M` may be a decoration, never `M:` a field line
    inline = allowed_after(HEADER + "A|d2d dcd|[")
    assert "M" not in inline and "K" not in inline and "L" not in inline and "c" in inline


def test_the_tune_ends_only_after_a_bar_line_with_nothing_open():
    assert "</s>" in allowed_after(HEADER + "A|d2d dcd|d3 d2|]")
    assert "</s>" not in allowed_after(HEADER + "A|d2d dcd|d3 d2")  # a bar left open
    assert "</s>" not in allowed_after(HEADER + "A|d2d dcd|[df")  # a chord left open


def test_near_the_budget_only_the_ending_is_kept():
    assert allowed_after(HEADER + "A|d2d dcd|d3 d2|]", max_new_tokens=3) == {"</s>"}


def test_constrained_sampling_makes_an_untrained_model_write_tunes_that_pass():
    """An untrained model (fresh weights) writes noise that no checker passes (validity 0, bar consistency 0:
    test_bar_consistency_is_high_for_real_tunes_and_low_for_noise); constrained, its tunes keep syntax and metre.
    Measured here: validity 0.94, bars on the metre 0.96. Issue 12 aims at 0.95 and 0.98; this floor guards
    what is reached."""
    from test_evaluation import untrained_samples

    tunes = untrained_samples(count=32, constrain="metre")
    reports = [analyse(tune) for tune in tunes]
    validity = sum(r.valid for r in reports) / len(reports)
    bars = 1 - sum(r.bars_off for r in reports) / sum(r.bars_total for r in reports)
    print(f"constrained untrained model: validity {validity:.3f}, bars on the metre {bars:.3f}")
    assert validity >= 0.85 and bars >= 0.93
