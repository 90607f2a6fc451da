"""finetune.abc.reader: lengths, meters, bars and problems, read whole or a character at a time."""

from fractions import Fraction

import pytest

from finetune.abc.reader import Reader, bar_fits, bar_units, parse_length, parse_meter, read, section_openings


@pytest.mark.parametrize(
    "text, length",
    [("", 1), ("3", 3), ("3/2", Fraction(3, 2)), ("/", Fraction(1, 2)), ("//", Fraction(1, 4)), ("/4", Fraction(1, 4)),
     ("3/", Fraction(3, 2)), ("0", None), ("1/0", None), ("12345", None), ("x", None)],
)
def test_lengths_read_as_abc_writes_them(text, length):
    """`3/2`, `/`, `//` and bare numbers are lengths in units of L:; zero, a zero divisor and 5-digit numbers are not."""
    assert parse_length(text) == length


@pytest.mark.parametrize(
    "value, bar",
    [("6/8", Fraction(3, 4)), ("C", Fraction(1)), ("C|", Fraction(1)), ("3+2/8", Fraction(5, 8)), ("none", None),
     ("6/0", "bad"), ("waltz", "bad")],
)
def test_meters(value, bar):
    """M: values give the bar as a fraction of a whole note; free meter is None; anything else is "bad"."""
    assert parse_meter(value) == bar


def test_the_unit_defaults_by_meter():
    """Without L:, a meter below 3/4 counts in sixteenths and any other in eighths (ABC 2.1, 3.1.7)."""
    assert bar_units(Fraction(2, 4), None) == 8
    assert bar_units(Fraction(3, 4), None) == 6
    assert bar_units(Fraction(6, 8), Fraction(1, 8)) == 6
    assert bar_units(None, Fraction(1, 8)) is None


def test_bars_are_measured_with_tuplets_broken_rhythm_and_chords():
    """Each bar lasts what its notes add up to, in L: units: a triplet of three is two, `A>B` is two, `[ce]2` two."""
    reader = read("M:2/4\nL:1/8\nK:D\n(3ABc d2|A>B [ce]2|z4|\n")
    assert [bar.duration for bar in reader.bars] == [4, 4, 4]
    assert all(bar.wanted == 4 for bar in reader.bars) and reader.problems == []


def test_a_bar_too_long_and_a_bar_too_short_do_not_fit():
    """The fit of a bar is judged against M: and L:; the pickup and the last bar may be short, no inner bar may."""
    bars = read("M:4/4\nL:1/4\nK:C\nC|DEFG|ABc|defg a|G4|\n").bars
    assert [bar.duration for bar in bars] == [1, 4, 3, 5, 4]
    assert [bar_fits(bars, i) for i in range(len(bars))] == [True, True, False, False, True]


def test_a_bar_split_around_a_repeat_fits():
    """`G2 :|: G2` halves of one bar around a repeat sign are written on purpose, and fit."""
    bars = read("M:2/4\nL:1/8\nK:G\nG2|ABcd|e2:|:G2|ABcd|e2|]\n").bars
    assert all(bar_fits(bars, i) for i in range(len(bars)))
    assert section_openings(bars) == [0, 0, 0, 3, 3, 3]


def test_problems_are_recorded_and_reading_goes_on():
    """Text that is not ABC is a problem with its line; reading never raises and the bars after it still count."""
    reader = read("M:6/8\nL:1/8\nK:D\nABc de£|A0 BC|def gab|\n")
    assert any("unexpected '£'" in p for p in reader.problems)
    assert any("has no valid length" in p for p in reader.problems)
    assert all(p.startswith("line 4:") for p in reader.problems)
    assert reader.bars[-1].duration == 6 and reader.bars[-1].readable
    assert not reader.bars[0].readable


def test_music_before_the_key_and_bad_header_fields_are_problems():
    reader = read("M:7/0\nL:1/3\nABc|\nK:Q\n")
    assert sorted(p.split(": ", 1)[1].split(" ")[0] for p in reader.problems) == ["K:Q", "L:1/3", "M:7/0", "music"]


def test_fed_a_character_at_a_time_it_reads_what_it_reads_whole(corpus):
    """The sampler feeds the reader token by token: the bars and problems are those of the whole tune read at once."""
    for tune in corpus["validation"][:40]:
        reader = Reader()
        for ch in tune:
            reader.feed(ch)
        reader.finish()
        whole = read(tune)
        assert [(b.duration, b.wanted, b.before, b.after, b.line_end) for b in reader.bars] == [
            (b.duration, b.wanted, b.before, b.after, b.line_end) for b in whole.bars
        ]
        assert reader.problems == whole.problems


def test_a_copy_reads_on_without_touching_the_original():
    """`copy()` forks the reading state: what the copy reads leaves the original as it was."""
    reader = Reader().feed("M:3/4\nL:1/4\nK:G\nGAB|c")
    twin = reader.copy().feed("de|f2\n").finish()
    assert len(reader.bars) == 1 and reader.current == 0 and reader.pending == "c"
    assert [bar.duration for bar in twin.bars] == [3, 3, 2]


def test_the_listener_hears_every_piece_of_the_text_in_order(corpus):
    """A listener (the transposer's) is told every token, field line and stray character: together, the tune."""
    for tune in corpus["validation"][:40]:
        pieces = []
        reader = Reader(listener=lambda kind, piece, pieces=pieces: pieces.append(piece.group() if kind == "token" else piece))
        reader.feed(tune)
        reader.finish()
        assert "".join(pieces) == tune
