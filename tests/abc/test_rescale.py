"""Rescaling: the same music at another note value (M: and L: scaled together), as music21 and the checker read it;
and balance_meters, which tops up the rare (M:, L:) pairs of the training split with rescaled tunes."""

import random
import subprocess
import sys
import warnings
from collections import Counter
from fractions import Fraction

import datasets
import pytest
from conftest import REPO

from finetune.abc import header_length
from finetune.abc.check import check_tunes
from finetune.abc.rescale import family, meter_pair, rescale
from finetune.args import DataArguments
from finetune.data import BALANCE_MIN_TUNES, clean_splits, load_raw_splits, with_rescaled_copies

JIG = 'M:6/8\nL:1/8\nQ:"Lively" 3/8=120\nK:D\nA|dcd (3efg a2|[1 f3 z2:|[2 f3 z3|]\n'


@pytest.mark.parametrize("meter, unit, expected", [
    ("6/4", "1/4", 'M:6/4\nL:1/4\nQ:"Lively" 3/4=120\nK:D\nA|dcd (3efg a2|[1 f3 z2:|[2 f3 z3|]\n'),
    ("6/16", "1/16", 'M:6/16\nL:1/16\nQ:"Lively" 3/16=120\nK:D\nA|dcd (3efg a2|[1 f3 z2:|[2 f3 z3|]\n'),
    ("6/8", "1/8", JIG),
])
def test_only_the_header_changes_and_the_tempo_moves_with_the_unit(meter, unit, expected):
    assert rescale(JIG, meter, unit) == (expected, None)


@pytest.mark.parametrize("tune, meter, unit, reason", [
    (JIG, "3/4", "1/4", "numerator and units per bar differ"),  # 6 quarters are not 3 quarters
    (JIG, "6/4", "1/8", "numerator and units per bar differ"),  # 12 eighths are not 6
    ("M:6/8\nK:D\nA|\n", "6/4", "1/4", "needs both M: and L:"),  # without L:, the unit follows M:
    ("M:none\nL:1/8\nK:D\nA|\n", "6/4", "1/4", "no meter with bars"),
    ("M:6/8\nL:1/8\nK:D\nA|[M:3/4]A|\n", "6/4", "1/4", "inline [M:]"),
    ("M:6/8\nL:1/8\nK:D\nA|[Q:1/4=90]A|\n", "6/4", "1/4", "inline [Q:]"),
    ("M:6/8\nL:1/8\nK:D\nA|\nL:1/16\nA|\n", "6/4", "1/4", "after the header"),
    ("M:6/8\nL:1/8\nQ:C=120\nK:D\nA|\n", "6/4", "1/4", "Q:C=120"),
    ("M:6/8\nL:1/8\nQ:1/0=120\nK:D\nA|\n", "6/4", "1/4", "Q:1/0=120"),
])
def test_what_cannot_be_rewritten_exactly_is_refused_with_the_reason(tune, meter, unit, reason):
    rewritten, why = rescale(tune, meter, unit)
    assert rewritten is None and reason in why


def test_c_and_cut_time_are_four_and_two_beats():
    assert family("C", "1/8") == family("4/4", "1/8") == family("4/2", "1/4") == ("4", 8)
    assert family("C|", "1/8") == family("2/4", "1/16") == ("2", 8)
    assert rescale("M:C\nL:1/8\nK:G\nGABc d2B2|\n", "4/2", "1/4") == ("M:4/2\nL:1/4\nK:G\nGABc d2B2|\n", None)


def scaled(pair: tuple[str, str], by: Fraction) -> tuple[str, str] | None:
    """(M:, L:) with both note values multiplied by `by` ((6/8, 1/8) by 2 is (6/4, 1/4)); None where that is no meter."""
    numerator, units = family(*pair)
    new_unit = Fraction(pair[1].replace(" ", "")) * by
    new = (f"{numerator}/{Fraction(int(numerator)) / (units * new_unit)}", str(new_unit)) if numerator.isdigit() else None
    return new if new and family(*new) == (numerator, units) else None


def rescalable(tune: str) -> bool:
    return bool(meter_pair(tune)) and all(scaled(meter_pair(tune), by) for by in (Fraction(2), Fraction(1, 2)))


def music21_rhythm(text):
    """Every note, chord and rest as music21 reads the tune: (pitches, quarter length), and its bars."""
    from music21 import converter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        score = converter.parse("X:1\n" + text, format="abc")
    events = [(tuple(p.midi for p in getattr(e, "pitches", ())), Fraction(e.quarterLength))
              for e in score.flatten().notesAndRests if not e.isChord or e.pitches]
    return events, len(score.parts[0].getElementsByClass("Measure")) if score.parts else 0


@pytest.mark.integration
def test_real_tunes_keep_their_notes_and_bars_at_twice_and_half_the_note_values(corpus):
    """Over 40 held-out real tunes, each written at twice and at half its note values: music21 reads the same
    pitches in the same bars, every length scaled by exactly the factor (measured: 80 of 80), and the
    checker's verdicts (validity, bars off the meter) do not change."""
    rng = random.Random(0)
    tunes = [t for t in rng.sample(list(corpus["validation"]), 80) if rescalable(t)][:40]
    assert len(tunes) == 40
    exact, rewritten = 0, []
    for tune in tunes:
        events, bars = music21_rhythm(tune)
        for by in (Fraction(2), Fraction(1, 2)):
            new = rescale(tune, *scaled(meter_pair(tune), by))[0]
            assert new is not None and new[header_length(new):] == tune[header_length(tune):]
            new_events, new_bars = music21_rhythm(new)
            exact += new_bars == bars and new_events == [(p, q * by) for p, q in events]
            rewritten.append(new)
    assert exact / 80 >= 0.99
    verdicts = [(v["valid"], v["bars_off"], v["bars_total"]) for v in check_tunes(tunes, "python")]
    assert [(v["valid"], v["bars_off"], v["bars_total"]) for v in check_tunes(rewritten, "python")] == [
        v for v in verdicts for _ in range(2)
    ]


@pytest.mark.integration
def test_there_and_back_gives_the_tune_back(corpus):
    tunes = [t for t in random.Random(1).sample(list(corpus["train"]), 500) if rescalable(t)]
    assert len(tunes) > 400  # most real tunes can be rescaled
    for tune in tunes:
        pair = meter_pair(tune)
        there = rescale(tune, *scaled(pair, Fraction(2)))[0]
        assert rescale(there, *pair)[0] == tune


def test_the_command_prints_one_tune_per_tune_and_keeps_those_it_cannot_rewrite(tmp_path):
    book = tmp_path / "book.abc"
    book.write_text("X:1\nM:3/4\nL:1/8\nK:G\nG2AB c2|\n\nX:2\nM:6/8\nL:1/8\nK:D\nA|\n")
    result = subprocess.run([sys.executable, "-m", "finetune.abc.rescale", str(book), "--meter", "3/2", "--unit", "1/4"],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stdout == "X:1\nM:3/2\nL:1/4\nK:G\nG2AB c2|\n\nX:2\nM:6/8\nL:1/8\nK:D\nA|\n\n"
    assert result.stderr.count("% not rescaled:") == 1


@pytest.mark.integration
def test_balance_meters_tops_up_rare_pairs_with_their_family_only_in_train(tmp_path, monkeypatch):
    """Each pair with 2 to `up_to - 1` training tunes reaches `up_to` (or all its family has), with copies of
    other pairs' tunes of its family, bodies unchanged; common and one-tune pairs get none; validation is as
    it was; the copies are the same at every run."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path))
    up_to = 40
    plain = DataArguments(max_train_samples=3000, max_eval_samples=50)
    base, _ = clean_splits(load_raw_splits(plain), plain)
    args = DataArguments(max_train_samples=3000, max_eval_samples=50, balance_meters=up_to)
    balanced, _ = clean_splits(load_raw_splits(args), args)
    assert balanced["validation"]["text"][:] == base["validation"]["text"][:]
    originals = base["train"]["text"][:]
    texts = balanced["train"]["text"][:]
    assert texts[: len(originals)] == originals
    copies = texts[len(originals):]
    before = Counter(p for t in originals if (p := meter_pair(t)))
    after = Counter(p for t in texts if (p := meter_pair(t)))
    family_size = Counter()
    for pair, n in before.items():
        family_size[family(*pair)] += n
    topped = 0
    for pair, n in before.items():
        if BALANCE_MIN_TUNES <= n < up_to:
            assert after[pair] == min(up_to, family_size[family(*pair)]), pair
            topped += after[pair] > n
        else:
            assert after[pair] == n, pair
    assert topped >= 5 and len(copies) > 100
    bodies = Counter(t[header_length(t):] for t in originals)
    assert all(bodies[c[header_length(c):]] for c in copies)
    assert len(set(copies)) == len(copies)  # drawn without repeats
    again = with_rescaled_copies(datasets.Dataset.from_dict({"text": originals}), args)["text"][:]
    assert again == texts
