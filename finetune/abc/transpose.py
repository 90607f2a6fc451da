"""Transposition: every note and every chord symbol's root (and bass) moves by N semitones.

    python -m finetune.abc.transpose tunes.abc --semitones 2      # the transposed tunes on stdout
    python -m finetune.abc.transpose tunes.abc --check -5 2 7     # how exactly they move, as music21 reads them

The tune is read by the one reader (reader.py), which tells this module every piece of the text in order;
notes, chord symbols and K: fields are rewritten and everything else is copied. The rules:

- A key moves to the conventional spelling of its new tonic, the one with the fewest sharps or flats
  (D major up 1 is Eb major, never D# major); its mode and anything after it are kept. `K:none` and
  `K:HP` are kept, and notes under them are spelt by the interval.
- A note keeps its letter distance to the tonic (a third above the tonic stays a third above the new
  tonic), and its pitch moves by exactly N. An accidental is written where the new key and the bar
  need one: ABC accidentals last to the end of the bar for that pitch, in the source and the output
  alike; an accidental the source wrote is written in the output too (a courtesy accidental stays one).
- Chord symbols ("Am7/G") move root and bass the same way; annotations ("^text") are text, kept.

A tune this module cannot transpose exactly (a K: field with explicit accidentals, `K:D exp ^f`) is
returned as None with the reason.
"""

from __future__ import annotations

import argparse
import json
import sys

import regex

from .reader import Reader
from .text import read_book, rewrite_book

LETTERS = "CDEFGAB"
NATURAL = (0, 2, 4, 5, 7, 9, 11)  # semitones above C of each letter
LETTER_FIFTHS = {"F": -1, "C": 0, "G": 1, "D": 2, "A": 3, "E": 4, "B": 5}  # on the circle of fifths
# Signature offset of each mode from its tonic's major key: A dorian has G major's signature.
MODE_FIFTHS = {"": 0, "maj": 0, "ion": 0, "mix": -1, "dor": -2, "m": -3, "min": -3, "aeo": -3, "phr": -4,
               "loc": -5, "lyd": 1}
SHARPS_ORDER, FLATS_ORDER = "FCGDAEB", "BEADGCF"
# Letter steps of an interval of N semitones where no key says (K:none): the spelling of the scale of C.
STEPS_BY_SEMITONES = (0, 1, 1, 2, 2, 3, 3, 4, 5, 5, 6, 6)
ACCIDENTALS = {"^^": 2, "^": 1, "=": 0, "_": -1, "__": -2}
WRITTEN = {value: text for text, value in ACCIDENTALS.items()}
KEY_FIELD = regex.compile(r"^(\s*)([A-Ga-g])([#b]?)(\s*)([A-Za-z]*)(.*)$", regex.DOTALL)
EXPLICIT = regex.compile(r"(?:^|\s)(?:[_^=]+[a-gA-G]|exp\b)", regex.IGNORECASE)
SPELLING = {1: "#", -1: "b", 0: ""}
ACCIDENTAL_OF = {text: value for value, text in SPELLING.items()}
NOTE = regex.compile(r"(?P<acc>\^\^|\^|__|_|=)?(?P<pitch>[A-Ga-g])(?P<octave>[,']*)")  # in grace notes
# A chord symbol, optional chords in parentheses too (`"(E7)"`, as some tune books mark a chord to leave out). Its
# bass may be written as tune books do: `/F#`, or as a note name with `+` for a sharp (`"D/f+"`, `"Gm/bb"`).
SYMBOL = regex.compile(r'^"(\(?)([A-G])([#b]?)([^/"]*)(?:/([A-Ga-g])([#b+]?))?(.*)"$', regex.DOTALL)


def fifths_of(letter: int, accidental: int, mode_fifths: int) -> int:
    """Sharps (positive) or flats of the key with this tonic and mode."""
    return LETTER_FIFTHS[LETTERS[letter]] + 7 * accidental + mode_fifths


def natural_pitch(degree: int) -> int:
    """Semitones of a letter without accidental, from C four octaves below middle C; degree = letter + 7 x octave."""
    return 12 * (degree // 7) + NATURAL[degree % 7]


class UntransposableKey(ValueError):
    """A key this module cannot move exactly."""


class Key:
    """A K: value read for transposition: tonic (letter index, accidental) and mode, or no signature."""

    def __init__(self, value: str):
        match = KEY_FIELD.match(value)
        self.tonic = None
        self.fifths = 0
        if match is None:
            if value.strip().lower() in ("", "none") or value.strip() in ("HP", "Hp"):
                self.parts = None
                return
            raise UntransposableKey(f"K:{value.strip()} is not a key this can transpose")
        lead, letter, accidental, gap, mode, rest = match.groups()
        mode_key = mode.lower()[:3] if mode.lower() not in ("m", "") else mode.lower()
        if mode_key not in MODE_FIFTHS:  # a word that is no mode: K:D clef=bass is D major
            gap, mode, rest, mode_key = "", "", gap + mode + rest, ""
        if EXPLICIT.search(rest):
            raise UntransposableKey(f"K:{value.strip()} names explicit accidentals; transposing it is not supported")
        self.parts = (lead, gap + mode, rest)
        self.tonic = (LETTERS.index(letter.upper()), ACCIDENTAL_OF[accidental])
        self.mode_fifths = MODE_FIFTHS[mode_key]
        self.fifths = fifths_of(*self.tonic, self.mode_fifths)

    def signature(self, letter: int) -> int:
        """The accidental the key gives a letter."""
        name = LETTERS[letter]
        if self.fifths > 0:
            return 1 if name in SHARPS_ORDER[: self.fifths] else 0
        return -1 if name in FLATS_ORDER[: -self.fifths] else 0

    def moved(self, semitones: int) -> tuple[Key, int]:
        """The key N semitones away, spelt with the fewest accidentals, and the letter steps notes move by."""
        if self.tonic is None:
            return self, STEPS_BY_SEMITONES[semitones % 12]
        pitch = (NATURAL[self.tonic[0]] + self.tonic[1] + semitones) % 12
        best = None
        for letter in range(7):
            accidental = (pitch - NATURAL[letter] + 6) % 12 - 6
            if abs(accidental) > 1:
                continue
            fifths = fifths_of(letter, accidental, self.mode_fifths)
            # Fewest accidentals; at six either way, sharps going up and flats going down.
            rank = (abs(fifths), -fifths if semitones % 12 <= 6 else fifths)
            if best is None or rank < best[0]:
                best = (rank, letter, accidental, fifths)
        _, letter, accidental, fifths = best
        new = Key.__new__(Key)
        new.parts, new.mode_fifths, new.tonic, new.fifths = self.parts, self.mode_fifths, (letter, accidental), fifths
        return new, (letter - self.tonic[0]) % 7

    def text(self) -> str:
        lead, mode, rest = self.parts
        return f"{lead}{LETTERS[self.tonic[0]]}{SPELLING[self.tonic[1]]}{mode}{rest}"


class Transposer:
    """Rewrites the pieces the reader hands over; `bar_*` hold the accidentals written in the current bar."""

    def __init__(self, semitones: int):
        self.semitones = semitones
        self.out: list[str] = []
        self.key = self.new_key = Key("C")
        self.steps = 0
        self.bar_in: dict[int, int] = {}
        self.bar_out: dict[int, int] = {}
        self.error: str | None = None

    def __call__(self, kind: str, piece) -> None:
        if kind == "token":
            self.out.append(self.token(piece))
        elif kind == "field" and piece[:2] == "K:":
            self.out.append("K:" + self.key_change(piece[2:]))
        else:
            self.out.append(piece)

    def key_change(self, value: str) -> str:
        try:
            self.key = Key(value)
        except UntransposableKey as e:
            self.error = self.error or str(e)
            return value
        self.new_key, self.steps = self.key.moved(self.semitones)
        self.bar_in, self.bar_out = {}, {}
        return self.new_key.text() if self.new_key.tonic is not None else value

    def token(self, match: regex.Match) -> str:
        text = match.group()
        if match.group("note") is not None:
            return self.note(match) + match.group("len")
        if match.group("grace") is not None:
            return NOTE.sub(self.note, text)
        if match.group("symbol") is not None:
            return self.symbol(text)
        if match.group("bar") is not None:
            self.bar_in, self.bar_out = {}, {}
        elif match.group("field") is not None and text[1] == "K":
            return f"[K:{self.key_change(text[3:-1])}]"
        return text

    def note(self, match: regex.Match) -> str:
        written, letter, octave_marks = match.group("acc"), match.group("pitch"), match.group("octave")
        degree = LETTERS.index(letter.upper()) + 7 * (5 if letter.islower() else 4)
        degree += 7 * (octave_marks.count("'") - octave_marks.count(","))
        if written is not None:
            self.bar_in[degree] = ACCIDENTALS[written]
        accidental = self.bar_in.get(degree, self.key.signature(degree % 7))
        pitch = natural_pitch(degree) + accidental + self.semitones
        # The letter is fixed by the key's move; the octave is the one that needs the smallest accidental.
        new_degree = degree + self.steps
        new_degree += 7 * round((pitch - natural_pitch(new_degree)) / 12)
        new_accidental = pitch - natural_pitch(new_degree)
        if abs(new_accidental) > 2:
            self.error = self.error or f"a note would need the accidental {new_accidental}"
            new_accidental = max(-2, min(2, new_accidental))
        expected = self.bar_out.get(new_degree, self.new_key.signature(new_degree % 7))
        mark = ""
        if written is not None or new_accidental != expected:
            mark = WRITTEN[new_accidental]
            self.bar_out[new_degree] = new_accidental
        octave = new_degree // 7
        name = LETTERS[new_degree % 7]
        return mark + (name.lower() + "'" * (octave - 5) if octave >= 5 else name + "," * (4 - octave))

    def symbol(self, text: str) -> str:
        match = SYMBOL.match(text)
        if match is None:  # an annotation, or a symbol that names no chord
            return text
        optional, root, root_accidental, quality, bass, bass_accidental, rest = match.groups()
        moved = optional + self.chord_root(root, root_accidental) + quality
        if bass is not None:
            moved_bass = self.chord_root(bass.upper(), "#" if bass_accidental == "+" else bass_accidental)
            if bass.islower():  # a bass written as a note name keeps that spelling: `d`, `bb`, `f+`
                moved_bass = moved_bass[0].lower() + moved_bass[1:].replace("#", "+")
            moved += "/" + moved_bass
        return f'"{moved}{rest}"'

    def chord_root(self, letter: str, accidental: str) -> str:
        index = LETTERS.index(letter)
        pitch = (NATURAL[index] + ACCIDENTAL_OF[accidental] + self.semitones) % 12
        target = (index + self.steps) % 7

        def offset(letter: int) -> int:
            return (pitch - NATURAL[letter] + 6) % 12 - 6

        # The letter the key's move gives, or where that needs a double sharp or flat, the nearest that does not.
        new = min(range(7), key=lambda letter: (abs(offset(letter)) > 1, min((letter - target) % 7, (target - letter) % 7)))
        return LETTERS[new] + SPELLING[offset(new)]


def transpose(tune: str, semitones: int) -> tuple[str | None, str | None]:
    """(the tune moved by `semitones`, None), or (None, why it cannot be moved exactly)."""
    transposer = Transposer(semitones)
    text = tune if tune.endswith("\n") else tune + "\n"
    Reader(listener=transposer).feed(text).finish()
    if transposer.error:
        return None, transposer.error
    out = "".join(transposer.out)
    return (out if tune.endswith("\n") else out[:-1]), None


def music21_pitches(tune: str) -> list[tuple]:
    """Every note's MIDI number, chord's MIDI numbers and chord symbol's root and bass, in order, as music21 reads the tune:
    the independent reading that the `--check` measure compares."""
    import warnings

    from music21 import chord, converter, harmony, note

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            # music21 reads a note-name bass's `+` (a sharp, `"D/f+"`) as nothing: it is told `#`
            score = converter.parse("X:1\n" + regex.sub(r'(/[a-g])\+(\)?")', r'\1#\2', tune), format="abc")
        except Exception:  # music21 raises many types for a tune it cannot read; that pair counts as not exact
            return []
    seq = []
    for element in score.flatten().notes:
        if isinstance(element, harmony.ChordSymbol):
            if element.figure and element.figure.lstrip("(")[:1] in LETTERS:  # music21 reads some text as chords
                seq.append(("root", element.root().pitchClass))
                seq.append(("root", element.bass().pitchClass))  # the bass, the root again where none is written
        elif isinstance(element, chord.Chord):
            seq.append(("chord", tuple(sorted(p.midi for p in element.pitches))))
        elif isinstance(element, note.Note):
            seq.append(("note", element.pitch.midi))
    return seq


def moved_by(original: list[tuple], moved: list[tuple], semitones: int) -> bool:
    """Whether `moved` is `original` (both from music21_pitches) with every pitch and chord root moved by exactly
    `semitones`."""
    if len(original) != len(moved) or not original:
        return False
    for (kind, a), (other, b) in zip(original, moved):
        if kind != other:
            return False
        if kind == "root" and (a + semitones) % 12 != b:
            return False
        if kind == "chord" and tuple(x + semitones for x in a) != b:
            return False
        if kind == "note" and a + semitones != b:
            return False
    return True


def check_book(tunes: list[str], shifts: list[int]) -> dict:
    """How exactly the tunes move: the share of (tune, shift) pairs in which music21 reads every note, chord and
    chord-symbol root and bass of the moved tune at exactly the shift from the tune's own, and how many carry chord
    symbols."""
    pairs, exact, refused, chords, missed = 0, 0, 0, 0, []
    for index, tune in enumerate(tunes):
        original = music21_pitches(tune)
        chords += any(kind == "root" for kind, _ in original)
        for semitones in shifts:
            pairs += 1
            moved, _ = transpose(tune, semitones)
            if moved is None:
                refused += 1
            elif moved_by(original, music21_pitches(moved), semitones):
                exact += 1
            else:
                missed.append([index, semitones])
    return {"tunes": len(tunes), "with_chord_symbols": chords, "pairs": pairs, "exact": exact,
            "exact_share": round(exact / pairs, 4) if pairs else None, "refused": refused, "not_exact": missed[:20]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune.abc.transpose", description=__doc__.split("\n")[0])
    parser.add_argument("file", help="an ABC file (a tune book)")
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("--semitones", type=int, help="how far to move, e.g. 2 or -5")
    how.add_argument("--check", type=int, nargs="+", metavar="SHIFT",
                     help="measure instead: move every tune by each shift and print, as JSON, the share that music21 "
                     "reads moved exactly (notes, chords, chord-symbol roots and basses), e.g. --check -5 2 7")
    args = parser.parse_args(argv)
    if args.check:
        tunes = read_book(args.file)
        if tunes is None:
            return 2
        print(json.dumps(check_book(tunes, args.check)))
        return 0
    return rewrite_book(args.file, lambda tune: transpose(tune, args.semitones), "transposed")


if __name__ == "__main__":
    sys.exit(main())
