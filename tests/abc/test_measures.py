"""finetune.abc.measures: pitches and lengths as music21 reads them, and measures that real tunes pass and garbage fails."""

import difflib
import json
import random
import subprocess
import sys
from fractions import Fraction

import pytest
from conftest import REPO, untrained_samples

from finetune.abc.measures import Typicality, compare, key_signature, tune_flags, tune_music
from finetune.abc.text import header_length
from finetune.generation import Sample, rerank_key


def body_edit(tune: str, edit) -> str:
    head = header_length(tune)
    return tune[:head] + edit(tune[head:])


def random_pitches(tune: str, rng: random.Random) -> str:
    """The same rhythm and bars with every note letter drawn at random."""
    return body_edit(tune, lambda body: "".join(rng.choice("CDEFGABcdefgab") if c in "ABCDEFGabcdefg" else c for c in body))


def one_bar_looped(tune: str) -> str:
    """The tune's first full bar written again and again, for as many bars as the tune has."""
    music = tune_music(tune)
    body = tune[header_length(tune):]
    bars = [bar for bar in body.replace("\n", "|").split("|") if bar.strip(":[]0123456789 ")]
    return tune[:header_length(tune)] + (bars[1 if len(bars) > 1 else 0] + "|") * max(len(music.bars), 8) + "\n"


def written_twice(tune: str) -> str:
    """The tune's body written out twice, as a tune book would write a repeat out: each bar now comes twice."""
    return body_edit(tune, lambda body: body + body)


def long_notes(tune: str) -> str:
    """One long low note a bar: a handful of long low notes scattered over the tune's length."""
    return tune[:header_length(tune)] + "".join(f"{rng_note}8|" for rng_note in "C,E,G,C,D,F,A,D,") + "\n"


@pytest.fixture(scope="module")
def sets(corpus):
    rng = random.Random(0)
    return rng.sample(corpus["validation"], 150), rng.sample(corpus["test"], 64)


@pytest.mark.parametrize(
    "value, tonic, signature",
    [("D", 2, {"F": 1, "C": 1}), ("Ador", 9, {"F": 1}), ("Bb", 10, {"B": -1, "E": -1}), ("Em", 4, {"F": 1}),
     ("C", 0, {}), ("none", None, {}), ("D exp ^g", 2, {"G": 1})],
)
def test_key_signatures(value, tonic, signature):
    """K: gives the tonic (the final of a mode) and the signature; `exp` keeps only what it writes."""
    assert key_signature(value) == (tonic, signature)


def test_accidentals_last_to_the_end_of_the_bar_for_their_octave():
    """ABC 2.1: `^f` sharpens the f's after it in its bar, not F or the next bar's f."""
    music = tune_music("M:4/4\nL:1/4\nK:C\n^f f F f|f4|\n")
    assert music.pitches == [78, 78, 65, 78, 77]
    assert music.sounding[-1] == (77, Fraction(1))


@pytest.mark.integration
def test_pitches_and_lengths_are_music21s_for_real_tunes(corpus):
    """On 100 held-out tunes, >= 99% of the notes have music21's pitch and length (aligned, as music21 splits a
    note that overfills its bar and this reader does not)."""
    import music21

    same = total = 0
    for tune in random.Random(1).sample(corpus["validation"], 100):
        score = music21.converter.parse("%abc-2.1\nX:1\n" + tune, format="abc")
        theirs = [(max(p.midi for p in n.pitches), Fraction(n.quarterLength).limit_denominator(64))
                  for n in score.recurse().notes if not n.duration.isGrace]
        ours = [(pitch, length * 4) for pitch, length in tune_music(tune).sounding]
        same += sum(block.size for block in difflib.SequenceMatcher(None, ours, theirs, autojunk=False).get_matching_blocks())
        total += max(len(ours), len(theirs))
    assert same / total >= 0.99, same / total


@pytest.mark.integration
def test_real_tunes_score_high_and_each_garbage_fails_the_measure_meant_to_catch_it(sets):
    """Real test tunes against real validation tunes overlap almost wholly; random pitches fail the interval and
    range measures, one bar looped fails the distinct bars, the runs and the mean, long notes fail everything, and
    an untrained model's tunes fail the mean."""
    real, other = sets
    rng = random.Random(2)
    real_vs_real = compare(real, other)
    assert real_vs_real["overlapped_area"] > 0.9
    assert abs(real_vs_real["generated"]["repeat_sign"] - real_vs_real["real"]["repeat_sign"]) < 0.15
    pitches = compare(real, [random_pitches(t, rng) for t in other])
    assert pitches["distribution"]["interval"]["overlapped_area"] < 0.6
    assert pitches["distribution"]["pitch_range"]["overlapped_area"] < 0.8
    assert pitches["generated"]["tonic_ending"] < real_vs_real["generated"]["tonic_ending"] - 0.3
    looped = compare(real, [one_bar_looped(t) for t in other])
    assert looped["generated"]["distinct_bars"] < 0.2 and looped["generated"]["bar_runs"] > 0.7
    assert looped["overlapped_area"] < 0.7
    scattered = compare(real, [long_notes(t) for t in other])
    assert scattered["overlapped_area"] < 0.5
    assert scattered["distribution"]["note_length"]["overlapped_area"] < 0.3
    untrained = compare(real, untrained_samples(32))
    assert untrained["overlapped_area"] < 0.7
    print({name: round(result["overlapped_area"], 3) for name, result in [
        ("real", real_vs_real), ("random pitches", pitches), ("looped", looped), ("long notes", scattered),
        ("untrained", untrained)]})


def test_typicality_puts_real_tunes_nearer_than_garbage_and_best_of_n_ranks_by_it(sets):
    """Each real test tune lies nearer the real validation tunes than its long-note version and, over the set,
    than its random-pitch version; of two candidates alike in everything the checker and the flags see, best of n
    keeps the nearer, and without a Typicality nearness decides nothing."""
    real, other = sets
    typical, rng = Typicality(real), random.Random(3)
    near = [typical.distance(tune_music(t)) for t in other[:24]]
    assert 0.5 < sorted(near)[len(near) // 2] < 1.5  # a real tune: about the real tunes' own spread
    assert all(d < typical.distance(tune_music(long_notes(t))) for d, t in zip(near, other))
    assert sum(near) < sum(typical.distance(tune_music(random_pitches(t, rng))) for t in other[:24])
    assert typical.distance(tune_music("M:4/4\nK:C\n")) == float("inf")  # no notes: never preferred
    candidates = [Sample(prompt="", text=t, ended=True, new_tokens=0) for t in other]
    a, b = [s for s in candidates if rerank_key(s)[:5] == (True, True, True, 0, 0.0)][:2]  # whole, valid, unflagged
    nearer = min((a, b), key=lambda s: typical.distance(tune_music(s.text)))
    assert max((a, b), key=lambda s: rerank_key(s, typical)) is nearer
    assert max((b, a), key=lambda s: rerank_key(s, typical)) is nearer


def test_typicality_with_form_also_weighs_how_much_a_tune_repeats_itself(sets):
    """A tune written out twice keeps its notes in the same proportions, so the distribution features hardly move;
    with_form sees every bar come twice and sets the tune farther than it was, where without it the two lie about
    as near. The form term is never negative, and a tune with no bars is never preferred."""
    real, other = sets
    plain, shaped = Typicality(real), Typicality(real, with_form=True)
    farther_with_form = farther_without = 0
    for tune in other[:24]:
        once, twice = tune_music(tune), tune_music(written_twice(tune))
        assert shaped.distance(once) >= plain.distance(once)
        farther_with_form += shaped.distance(twice) > shaped.distance(once)
        farther_without += plain.distance(twice) > plain.distance(once) + 0.1
    assert farther_with_form >= 22 and farther_without <= 4, (farther_with_form, farther_without)
    assert shaped.distance(tune_music("M:4/4\nK:C\n")) == float("inf")


def test_a_looped_figure_and_a_wandering_ending_are_flagged():
    """The report's flags: a fragment, one figure for lines, no return to the tonic, notes outside the key; a real
    tune has none."""
    looped = "M:6/8\nL:1/8\nK:G\n" + "GBd gdB|" * 8 + "\n"
    assert any("one bar played 8 times" in flag for flag in tune_flags(looped))
    wandering = "M:4/4\nL:1/4\nK:D\n" + "D F A d|c e A2|" * 3 + "D F A d|=c =f _B =g|\n"
    flags = tune_flags(wandering)
    assert "does not end on the tonic of K:" in flags and any("outside the key" in flag for flag in flags)
    tune = "M:4/4\nL:1/4\nK:D\n" + "D F A d|c e A2|" * 3 + "d c B A|d A F D|\n"
    assert tune_flags(tune) == []
    assert tune_flags(tune.replace("D F A d|c e A2|" * 3, "")) == ["only 2 bars"]


def test_the_command_prints_one_json_object_and_refuses_bad_input_in_one_line(tmp_path, corpus):
    real = tmp_path / "real.jsonl"
    real.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus["validation"][:30]))
    generated = tmp_path / "generated.abc"
    generated.write_text("\n".join(f"X:{i}\n{t}" for i, t in enumerate(corpus["test"][:20], 1)))
    result = subprocess.run([sys.executable, "-m", "finetune.abc.measures", str(real), str(generated)],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert 0.5 < found["overlapped_area"] <= 1 and found["generated"]["tunes"] == 20 and found["real"]["tunes"] == 30
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "K:D\\nABc|"}\n{"txt": 1}\n')
    result = subprocess.run([sys.executable, "-m", "finetune.abc.measures", str(real), str(broken)],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "broken.jsonl:2: no 'text'" in result.stderr


def test_any_mutated_tune_is_measured_without_raising(corpus):
    """Seeded fuzz: 400 real tunes with ABC-significant edits are read, measured and flagged without an exception."""
    from test_fuzz import ABC_PIECES, mutate

    rng = random.Random(3)
    tunes = [mutate(t, rng, ABC_PIECES, rng.randint(1, 6)) for t in rng.sample(corpus["train"], 400)]
    result = compare(tunes[:200], tunes[200:])
    assert 0 <= result["overlapped_area"] <= 1
    for tune in tunes[:100]:
        tune_flags(tune)
