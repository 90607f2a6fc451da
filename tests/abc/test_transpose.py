"""Transposition: exact pitches (as music21 reads them, against abc2abc), conventional keys, bar-long accidentals."""

import json
import random
import shutil
import subprocess
import sys

import pytest
from conftest import REPO

from finetune.abc.check import check_tunes
from finetune.abc.transpose import check_book, moved_by, music21_pitches, transpose


@pytest.mark.parametrize("tune, semitones, expected", [
    # D major up 1 is Eb major: notes keep their degree, accidentals last to the bar line, courtesy ones stay.
    ('K:D\ndAF|"D"d2 "A7/C#"f|^c=c c|{gf}e|\n', 1, 'K:Eb\neBG|"Eb"e2 "Bb7/D"g|=d_d d|{ag}f|\n'),
    ("K:Ador\nA^GAB c2|\n", 2, "K:Bdor\nB^ABc d2|\n"),  # modes keep their name and move their signature
    ("K:C\nC,Cc'|\n", -1, "K:B\nB,,B,b|\n"),  # B major (5 sharps), not Cb major (7 flats)
    ("K:C\nC,Cc'|\n", 13, "K:Db\nDdd''|\n"),
    ("K:none\nC^CD|\n", 3, "K:none\n_E=EF|\n"),  # no key: spelt by the interval
    ("K:Bb\n_B=Bb|\n", 7, "K:F\n=f^ff'|\n"),  # an accidental holds for its octave only
    ("K:Gm\nG_B=B|\n", -2, "K:Fm\nF_A=A|\n"),
    ("K:D clef=bass\nd|\n", 2, "K:E clef=bass\ne|\n"),
    ('K:G\n"^text"G [K:D] d|"dance"A\n', 2, 'K:A\n"^text"A [K:E] e|"dance"B\n'),  # annotations are text
    ('K:D\n"(E7)"A2 "(A7/C#)"B|\n', 2, 'K:E\n"(F#7)"B2 "(B7/D#)"c|\n'),  # optional chords in parentheses move too
    # a bass written as a note name (the Nottingham Music Database's `+` for a sharp) keeps that spelling
    ('K:G\n"D7/a"A "D/f+"A "Gm/bb"A|\n', 2, 'K:A\n"E7/b"B "E/g+"B "Am/c"B|\n'),
])
def test_notes_keys_and_chord_symbols_move_exactly(tune, semitones, expected):
    assert transpose(tune, semitones) == (expected, None)


def test_a_key_with_explicit_accidentals_is_refused_with_the_reason():
    moved, reason = transpose("K:D exp ^f\nd|\n", 2)
    assert moved is None and "explicit accidentals" in reason


def abc2abc(tune, semitones, tmp_path):
    path = tmp_path / "tune.abc"
    path.write_text("X:1\n" + tune)
    out = subprocess.run(["abc2abc", str(path), "-t", str(semitones)], capture_output=True, text=True).stdout
    return out.split("\n", 1)[1] if out.startswith("X:") else out


@pytest.mark.integration
def test_real_tunes_move_by_exactly_the_shift_as_music21_reads_them(corpus, tmp_path):
    """>= 99% of (tune, shift) pairs of real held-out tunes move every note, chord and chord-symbol root by
    exactly the shift; abc2abc -t N, scored the same way, is the yardstick (measured on 1,200 pairs:
    99.8% both). Transposing changes no checker verdict."""
    tunes = random.Random(0).sample(corpus["validation"], 60)
    pairs, ours, theirs = 0, 0, 0
    for tune in tunes:
        original = music21_pitches(tune)
        for semitones in (-5, 2, 7):
            pairs += 1
            moved, reason = transpose(tune, semitones)
            assert moved is not None, reason
            ours += moved_by(original, music21_pitches(moved), semitones)
            if shutil.which("abc2abc"):
                theirs += moved_by(original, music21_pitches(abc2abc(tune, semitones, tmp_path)), semitones)
    assert ours / pairs >= 0.99
    if shutil.which("abc2abc"):
        assert theirs / pairs >= 0.95  # the comparison itself reads abc2abc's output right
    # The checker's verdict is about rhythm and syntax, which transposing must not touch.
    moved = [transpose(tune, 3)[0] for tune in tunes]
    before, after = check_tunes(tunes, "python"), check_tunes(moved, "python")
    assert [(v["valid"], v["bars_off"]) for v in before] == [(v["valid"], v["bars_off"]) for v in after]


@pytest.mark.integration
def test_up_and_back_down_gives_the_tune_back(corpus):
    """A round trip through any shift returns the very text for nearly every tune (measured: 99.9% of 2,000)."""
    rng = random.Random(1)
    tunes = rng.sample(corpus["train"], 500)
    back = sum(transpose(transpose(t, n)[0], -n)[0] == t for t in tunes for n in [rng.choice([-6, -3, -1, 1, 2, 5])])
    assert back / len(tunes) >= 0.99


def test_the_command_prints_one_transposed_tune_per_tune(tmp_path):
    book = tmp_path / "book.abc"
    book.write_text("X:1\nT:One\nK:G\nGAB|\n\nX:2\nT:Two\nK:Em\nEFG|\n")
    result = subprocess.run([sys.executable, "-m", "finetune.abc.transpose", str(book), "--semitones", "2"],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "X:1\nT:One\nK:A\nABc|\n\nX:2\nT:Two\nK:F#m\nFGA|\n\n"


@pytest.mark.integration
def test_check_measures_a_tune_book_and_catches_an_unmoved_chord(tmp_path, capsys):
    """`--check` scores a book with chord symbols, optional ones and note-name basses as music21 reads them, and
    the comparison under it fails a tune whose chord symbol stayed put."""
    from finetune.abc.transpose import main

    book = [
        'M:6/8\nL:1/8\nK:G\n"G"GAB "D7/a"AGF|"(Em)"EFG "C/e"c2B|"Am"ABc "D/f+"d2c|"G"B3 G3|]\n',
        'M:4/4\nL:1/8\nK:Dm\n"Dm"D2FA "(A7)"^c2e2|"Gm/bb"d2B2 "A7/C#"A4|"Dm"d8|]\n',
    ]
    (tmp_path / "book.abc").write_text("".join(f"X:{i}\n{tune}\n" for i, tune in enumerate(book, 1)))
    assert main([str(tmp_path / "book.abc"), "--check", "-5", "2", "7"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result == {**result, "tunes": 2, "with_chord_symbols": 2, "pairs": 6, "exact": 6, "exact_share": 1.0}
    moved, _ = transpose(book[0], 2)
    unmoved_chord = moved.replace('"E7/b"', '"D7/b"')  # the chord symbol left where it was
    assert moved != unmoved_chord and moved_by(music21_pitches(book[0]), music21_pitches(moved), 2)
    assert not moved_by(music21_pitches(book[0]), music21_pitches(unmoved_chord), 2)
    assert check_book(["L:1/4\nK:C\nCDE|\n"], [1])["exact"] == 1 and check_book(["not a tune %%%"], [1])["exact"] == 0
