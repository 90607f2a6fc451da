"""Rescaling: a tune written again with another note as its unit, the same music (6/8 at L:1/8 is 6/4 at L:1/4).

    python -m finetune.abc.rescale tunes.abc --meter 6/4 --unit 1/4     # the rewritten tunes on stdout

The body of an ABC tune counts every length in units of L:, so when M: and L: are scaled together (a bar of
six eighths written as a bar of six quarters) every note, rest, tuplet and bar line stays as it is written:
only the header changes. M: keeps its numerator (a compound meter stays compound, so tuplets keep their
default counts) and the bar keeps its number of L: units; Q: moves with L: (`Q:1/4=120` to `Q:1/2=120`), so
the tune plays at the same speed. The data pipeline uses it to give the (M:, L:) pairs that few tunes use
more tunes to learn their bar from (DataArguments.balance_meters).

A tune this module cannot rewrite exactly is returned as None with the reason: one that changes M:, L: or Q:
after its header, one without an L: (its unit would follow M:), M:none, or a Q: of another form (`Q:C=120`).
"""

from __future__ import annotations

import argparse
import sys
from fractions import Fraction

import regex

from .reader import METER, UNIT, Reader, bar_units, parse_meter
from .text import rewrite_book

TEMPO_BEATS = regex.compile(r"(\d{1,4})\s*/\s*([1-9]\d{0,3})")  # the beat fractions of `Q:"Allegro" 1/4=120`
BARE_TEMPO = regex.compile(r'^\s*(?:"[^"]*"\s*)?(?:\d{1,4}\s*)?(?:"[^"]*"\s*)?$')  # `Q:120`, `Q:"Slow"`


def family(meter: str, unit: str) -> tuple[str, Fraction] | None:
    """What a rescaling keeps of an (M:, L:) pair: the meter's numerator and the L: units of a bar.

    Two pairs of one family are the same bars written at different note values; None for M:none, a
    malformed field, or one of no bar."""
    meter_match, unit_match, value = METER.match(meter), UNIT.match(unit), parse_meter(meter)
    if not meter_match or not unit_match or not isinstance(value, Fraction):  # M:none, M:0/4, L:1/3
        return None
    numerator = meter_match.group(1) or ("4" if meter_match.group(3).upper() == "C" else "2")
    return regex.sub(r"\s", "", numerator), bar_units(value, Fraction(1, int(unit_match.group(1))))


class _Rewriter:
    """Copies every piece the reader hands over, with the header's M:, L: and Q: put in new."""

    def __init__(self, meter: str, unit: str):
        self.meter, self.unit = meter, unit
        self.out: list[str] = []
        self.fields: dict[str, str] = {}
        self.in_body = False
        self.error: str | None = None
        self.scale = Fraction(1)

    def __call__(self, kind: str, piece) -> None:
        if kind == "token":
            text = piece.group()
            if piece.group("field") is not None and text[1] in "MLQ":
                self.fail(f"an inline [{text[1]}:] field changes the meter or tempo inside the tune")
            self.out.append(text)
            return
        if kind == "field":
            letter, value = piece[0], piece[2:]
            if letter in "MLQ":
                if self.in_body or letter in self.fields:
                    self.fail(f"{letter}: is written more than once or after the header")
                self.fields[letter] = value.strip()
                piece = {"M": "M:" + self.meter, "L": "L:" + self.unit}.get(letter, piece)
            self.in_body = self.in_body or letter == "K"
        self.out.append(piece)

    def fail(self, reason: str) -> None:
        self.error = self.error or reason

    def tempo(self, value: str) -> str | None:
        """Q: with its beats scaled like L: (quoted text kept), or None when it is of a form this cannot scale."""
        beats, equals, rest = value.partition("=")
        if not equals:  # `Q:120` counts L: units, `Q:"Slow"` none: both mean the same after rescaling
            return value if BARE_TEMPO.match(value) else None
        pieces = regex.split(r'("[^"]*")', beats)  # quoted text at the odd places
        music = "".join(pieces[::2])
        if not TEMPO_BEATS.search(music) or TEMPO_BEATS.sub("", music).strip():
            return None

        def scaled(match: regex.Match) -> str:
            beat = Fraction(int(match.group(1)), int(match.group(2))) * self.scale
            return f"{beat.numerator}/{beat.denominator}"

        pieces[::2] = [TEMPO_BEATS.sub(scaled, piece) for piece in pieces[::2]]
        return "".join(pieces) + "=" + rest


def _read(tune: str, meter: str = "", unit: str = "") -> _Rewriter:
    """The tune read once, its header's M:, L: and Q: noted and its text copied with M:`meter` L:`unit` put in."""
    rewriter = _Rewriter(meter.strip(), unit.strip())
    Reader(listener=rewriter).feed(tune if tune.endswith("\n") else tune + "\n").finish()
    return rewriter


def _refusal(read: _Rewriter) -> str | None:
    """Why the tune that was read cannot be written at another note value; None when it can."""
    meter, unit, tempo = read.fields.get("M"), read.fields.get("L"), read.fields.get("Q")
    if read.error or not read.in_body:
        return read.error or "no K: field ends the header"
    if meter is None or unit is None:
        return "the header needs both M: and L: (without L:, the unit follows M:)"
    if family(meter, unit) is None:
        return f"M:{meter} L:{unit} is no meter with bars"
    if tempo is not None and read.tempo(tempo) is None:
        return f"Q:{tempo} is a tempo this cannot rescale"
    return None


def meter_pair(tune: str) -> tuple[str, str] | None:
    """The (M:, L:) a tune is written in, when it can be written in another pair of its family; else None."""
    read = _read(tune)
    return None if _refusal(read) else (read.fields["M"], read.fields["L"])


def rescale(tune: str, meter: str, unit: str) -> tuple[str | None, str | None]:
    """(`tune` written in M:`meter` with L:`unit`, None), or (None, why it cannot be rewritten exactly)."""
    read = _read(tune, meter, unit)
    if reason := _refusal(read):
        return None, reason
    old_meter, old_unit = read.fields["M"], read.fields["L"]
    new = family(meter, unit)
    if new is None:
        return None, f"M:{meter} L:{unit} is no meter with bars"
    if new != family(old_meter, old_unit):
        return None, (f"M:{meter} L:{unit} is not M:{old_meter} L:{old_unit} at another note value "
                      "(numerator and units per bar differ)")
    read.scale = Fraction(1, int(UNIT.match(unit).group(1))) / Fraction(1, int(UNIT.match(old_unit).group(1)))
    out = "".join(read.out)
    if "Q" in read.fields:
        out = regex.sub(r"(?m)^Q:.*$", lambda _: "Q:" + read.tempo(read.fields["Q"]), out, count=1)
    return (out if tune.endswith("\n") else out[:-1]), None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune.abc.rescale", description=__doc__.split("\n")[0])
    parser.add_argument("file", help="an ABC file (a tune book)")
    parser.add_argument("--meter", required=True, help="the new M:, e.g. 6/4 (the same numerator and units per bar)")
    parser.add_argument("--unit", required=True, help="the new L:, e.g. 1/4")
    args = parser.parse_args(argv)
    return rewrite_book(args.file, lambda tune: rescale(tune, args.meter, args.unit), "rescaled")


if __name__ == "__main__":
    sys.exit(main())
