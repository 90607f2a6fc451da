"""Check ABC tunes strictly: syntax, header fields and bar durations; music21 would accept most broken tunes.

    python -m finetune.abc_check FILE.abc [FILE.abc ...] [--checker auto|abc2midi|python]

prints one JSON object per tune: {"file", "index", "title", "checker", "valid", "errors", "bars_total",
"bars_off"}, and exits 0 (tunes that fail are findings, not failures of the command).

Syntax is judged by `abc2midi` (Debian package abcmidi, the strictest checker in common use; it always
exits 0, so its "Error" lines are read) when it is on PATH, and otherwise by the strict parser below.
Bar durations are always measured by the parser below, so both checkers count bars the same way.

A bar is *off* when its duration differs from what `M:` and `L:` ask for, except where real music does
that on purpose: the first and last bar (pickup and its complement), and a short bar beside a section
mark (`|:`, `:|`, `::`, `||`, `|]`, first and second endings), which is where split bars around repeats
live, and two neighbouring short bars that add up to one (a bar cut across a line break). A full bar
at the end of a line closes there even without a bar line, as the Essen collection writes phrases.
abc2midi's "Error" lines for idioms real tune books use are not counted, and its warnings that it skipped
or guessed part of the text are (see ABC2MIDI_IDIOMS and ABC2MIDI_GUESSES).

A tune is valid when its syntax is clean, K: is present, M:/L:/K: are well-formed, no off bar has a
length found nowhere else in the tune (a broken bar; a length that recurs is the tune's own, often a
metre M: does not state), and at least half of its bars keep the metre. `bars_off` counts every off bar.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from .abc import FIELD_LINE, INLINE_COMMENT, split_tunes

CHECKERS = ("auto", "abc2midi", "python")

METER = re.compile(r"^\s*(?:(\d+(?:\+\d+)*)\s*/\s*(\d+)|(C\|?)|(none))\s*$", re.IGNORECASE)
UNIT = re.compile(r"^\s*1\s*/\s*(1|2|4|8|16|32|64)\s*$")
KEY = re.compile(
    r"^\s*(?:none|HP|Hp|[A-G][#b]?\s*(?:maj\w*|min\w*|m|mix\w*|dor\w*|phr\w*|lyd\w*|loc\w*|aeo\w*|ion\w*|exp\w*)?)"
    r"(?:\s+(?:[_^=]+[a-gA-G]|\w+=\S+|[a-z]+|-?\d+))*\s*$",
    re.IGNORECASE,
)

# One token of a tune body (ABC 2.1, section 4). Order matters: longer forms first.
BODY_TOKEN = re.compile(
    r"""
    (?P<space>[ \t`y]+|\\$)
  | (?P<comment>%.*$)
  | (?P<field>\[[A-Za-z]:[^\]\n]*\])
  | (?P<bar>:*\[?\|+\]?:*(?:\s?\[?\d+(?:[,-]\d+)*)?|::+(?:\d+(?:[,-]\d+)*)?|\[\d+(?:[,-]\d+)*)
  | (?P<note>(?P<acc>\^\^|\^|__|_|=)?(?P<pitch>[A-Ga-g])[,']*(?P<len>\d*/*\d*))
  | (?P<rest>[zx](?P<rlen>\d*/*\d*))
  | (?P<measures>[ZX](?P<count>\d*))
  | (?P<chord_start>\[)
  | (?P<chord_end>\](?P<clen>\d*/*\d*))
  | (?P<grace>\{/?[^}\n]*\})
  | (?P<symbol>"[^"\n]*")
  | (?P<decoration>![^!\n]+!|\+[^+\n]+\+|[.~HLMOPSTuv])
  | (?P<tuplet>\((?P<p>[2-9])(?::(?P<q>\d*))?(?::(?P<r>\d*))?)
  | (?P<slur>[()])
  | (?P<tie>-)
  | (?P<broken>[<>]{1,3})
  | (?P<overlay>&)
    """,
    re.VERBOSE,
)
TOKEN_KINDS = ("space", "comment", "field", "bar", "note", "rest", "measures", "chord_start", "chord_end", "grace",
               "symbol", "decoration", "tuplet", "slur", "tie", "broken", "overlay")
SECTION_BAR = re.compile(r":|\|\||\|\]|\[\||\d")


@dataclass(frozen=True)
class Bar:
    duration: Fraction  # in L: units
    wanted: Fraction | None  # what M: and L: ask for; None under M:none
    before: str  # the bar line that opens it
    after: str  # the bar line that closes it


@dataclass
class TuneReport:
    """What the checker found in one tune."""

    errors: list[str] = field(default_factory=list)
    bars_total: int = 0
    bars_off: int = 0

    @property
    def valid(self) -> bool:
        return not self.errors


def parse_length(text: str) -> Fraction:
    """`3/2` -> 3/2, `/` -> 1/2, `//` -> 1/4, `3` -> 3, `` -> 1 (in units of L:)."""
    match = re.fullmatch(r"(\d*)(/*)(\d*)", text)
    numerator = int(match.group(1)) if match.group(1) else 1
    slashes, denominator = match.group(2), match.group(3)
    if not slashes:
        return Fraction(numerator)
    return Fraction(numerator, int(denominator) if denominator else 2 ** len(slashes))


def parse_meter(value: str) -> Fraction | None:
    """The bar length as a fraction of a whole note, None for `M:none`; raises ValueError if malformed."""
    match = METER.match(value)
    if not match:
        raise ValueError(value)
    if match.group(1):
        return Fraction(sum(int(n) for n in match.group(1).split("+")), int(match.group(2)))
    if match.group(3):
        return Fraction(1) if match.group(3) == "C" else Fraction(2, 2)
    return None


def default_unit(meter: Fraction | None) -> Fraction:
    """ABC 2.1, 3.1.7: 1/16 for meters below 3/4, else 1/8."""
    return Fraction(1, 16) if meter is not None and meter < Fraction(3, 4) else Fraction(1, 8)


def tuplet_default_q(p: int, meter: Fraction | None) -> int:
    """ABC 2.1, 4.13: (2 is two in the time of three, (3 three in the time of two, ..."""
    if p in (2, 4, 8):
        return 3
    if p in (3, 6):
        return 2
    compound = meter is not None and meter.numerator % 3 == 0 and meter.numerator > 3
    return 3 if compound else 2


class _Body:
    """Walks a tune's lines, checks syntax and header fields, and measures every bar."""

    def __init__(self, report: TuneReport, strict_syntax: bool):
        self.report, self.strict = report, strict_syntax
        self.meter: Fraction | None = Fraction(1)
        self.unit: Fraction | None = None
        self.bars: list[Bar] = []
        self.current, self.before, self.has_notes = Fraction(0), "", False
        self.tuplet_left, self.tuplet_ratio = 0, Fraction(1)
        self.last_note: Fraction | None = None
        self.pending_broken = Fraction(1)
        self.chord: list[Fraction] | None = None
        self.multi_voice = False

    def error(self, message: str) -> None:
        if self.strict:
            self.report.errors.append(message)

    def set_meter(self, value: str, where: str) -> None:
        try:
            self.meter = parse_meter(value)
        except ValueError:
            self.error(f"{where}: M:{value} is not a meter (e.g. M:6/8, M:C)")

    def set_unit(self, value: str, where: str) -> None:
        match = UNIT.match(value)
        if match:
            self.unit = Fraction(1, int(match.group(1)))
        else:
            self.error(f"{where}: L:{value} is not a note length (e.g. L:1/8)")

    def header_field(self, letter: str, value: str, where: str) -> None:
        if letter == "M":
            self.set_meter(value, where)
        elif letter == "L":
            self.set_unit(value, where)
        elif letter == "K" and not KEY.match(value):
            self.error(f"{where}: K:{value} is not a key (e.g. K:D, K:Ador)")
        elif letter == "V":
            self.multi_voice = True

    def add(self, length: Fraction) -> None:
        """Account one note or rest of `length` units (tuplets and broken rhythm applied here)."""
        if self.tuplet_left:
            length *= self.tuplet_ratio
            self.tuplet_left -= 1
        length *= self.pending_broken
        self.pending_broken = Fraction(1)
        self.current += length
        self.last_note, self.has_notes = length, True

    def wanted(self) -> Fraction | None:
        """The bar length in L: units that M: asks for now; None for free meter."""
        return self.meter / (self.unit or default_unit(self.meter)) if self.meter is not None else None

    def close_bar(self, mark: str) -> None:
        if self.has_notes:
            self.bars.append(Bar(self.current, self.wanted(), self.before, mark))
        self.current, self.has_notes, self.before = Fraction(0), False, mark

    def line(self, text: str, where: str) -> None:
        pos = 0
        while pos < len(text):
            match = BODY_TOKEN.match(text, pos)
            if not match or match.end() == pos:
                self.error(f"{where}:{pos + 1}: unexpected {text[pos]!r}")
                pos += 1
                continue
            self.token(match, f"{where}:{pos + 1}")
            pos = match.end()
        if self.chord is not None:
            self.error(f"{where}: chord '[' not closed on its line")
            self.chord = None
        if self.has_notes and self.current == self.wanted():
            # A full bar at the end of a line needs no bar line: the Essen collection writes phrases that way.
            self.close_bar("")

    def token(self, match: re.Match, where: str) -> None:
        kind = next(name for name in TOKEN_KINDS if match.group(name) is not None)
        if kind == "field":
            letter, value = match.group()[1], match.group()[3:-1]
            if letter == "M":
                self.set_meter(value, where)
            elif letter == "L":
                self.set_unit(value, where)
        elif kind == "bar":
            if self.chord is not None:
                self.error(f"{where}: bar line inside a chord")
                self.chord = None
            self.close_bar(match.group())
        elif kind == "note" or kind == "rest":
            length = parse_length(match.group("len") if kind == "note" else match.group("rlen"))
            if length == 0:
                self.error(f"{where}: zero length {match.group()!r}")
            if self.chord is not None:
                self.chord.append(length)
            else:
                self.add(length)
        elif kind == "measures":
            # Z4 is four whole bars of rest: they end the bar before them and are not measured.
            self.close_bar("|")
        elif kind == "chord_start":
            if self.chord is not None:
                self.error(f"{where}: '[' inside a chord")
            self.chord = []
        elif kind == "chord_end":
            if self.chord is None:
                self.error(f"{where}: ']' closes no chord")
            elif not self.chord:
                self.error(f"{where}: empty chord")
                self.chord = None
            else:
                length, self.chord = self.chord[0] * parse_length(match.group("clen")), None
                self.add(length)
        elif kind == "tuplet":
            p = int(match.group("p"))
            q = int(match.group("q")) if match.group("q") else tuplet_default_q(p, self.meter)
            r = int(match.group("r")) if match.group("r") else p
            self.tuplet_left, self.tuplet_ratio = r, Fraction(q, p)
        elif kind == "broken":
            if self.last_note is None or not self.has_notes:
                self.error(f"{where}: broken rhythm {match.group()!r} with no note before it")
                return
            arrows = match.group()
            if len(set(arrows)) > 1:
                self.error(f"{where}: mixed broken rhythm {arrows!r}")
                return
            shorter = Fraction(1, 2 ** len(arrows))
            first, second = (2 - shorter, shorter) if arrows[0] == ">" else (shorter, 2 - shorter)
            self.current += self.last_note * (first - 1)
            self.pending_broken = second
        elif kind == "overlay":
            self.multi_voice = True

    def finish(self) -> None:
        self.close_bar("|]")
        if self.chord is not None:
            self.error("chord '[' never closed")
        if self.multi_voice:
            return  # voices overlap in time; bar sums of one interleaved line mean nothing
        self.report.bars_total = len(self.bars)
        lengths = Counter(bar.duration for bar in self.bars)
        edge = Bar(Fraction(0), None, "", "")
        padded = [edge, *self.bars, edge]
        for number, bar in enumerate(self.bars, start=1):
            if bar.wanted is None or bar.duration == bar.wanted:
                continue
            previous, following = padded[number - 1], padded[number + 1]
            if bar.duration < bar.wanted and (
                previous is edge
                or following is edge
                or SECTION_BAR.search(bar.before)
                or SECTION_BAR.search(bar.after)
                # a bar cut in two, typically across a line break (`d3 d2 |` then `A|` on the next line)
                or bar.wanted in (bar.duration + previous.duration, bar.duration + following.duration)
            ):
                continue
            self.report.bars_off += 1
            if lengths[bar.duration] == 1:
                self.report.errors.append(f"bar {number} lasts {bar.duration} units, M: and L: want {bar.wanted}")
        if self.report.bars_off * 2 > self.report.bars_total:
            self.report.errors.append(
                f"{self.report.bars_off} of {self.report.bars_total} bars are off the metre that M: and L: give"
            )


def analyse(tune: str, strict_syntax: bool = True) -> TuneReport:
    """Header checks and bar durations for one tune; with `strict_syntax`, also every syntax error."""
    report = TuneReport()
    body = _Body(report, strict_syntax)
    in_body, has_key = False, False
    for number, raw in enumerate(tune.split("\n"), start=1):
        line = INLINE_COMMENT.sub("", raw).rstrip()
        if not line:
            continue
        where = f"line {number}"
        field_match = FIELD_LINE.match(line)
        if field_match:
            letter, value = field_match.group(1), field_match.group(2).strip()
            if not in_body or letter in "MLKV":
                body.header_field(letter, value, where)
            if letter == "K":
                has_key = in_body = True
            continue
        if not in_body:
            body.error(f"{where}: music before the K: field")
            in_body = True
        body.line(line, where)
    if not has_key:
        report.errors.append("no K: field (every tune needs a key)")
    body.finish()
    return report


# abc2midi "Error" lines for idioms that real tune books use and that abc2midi itself plays anyway: a
# quoted string used as an annotation ("pp", "cresc.") rather than a guitar chord, R:hornpipe in 6/8, a
# tie with no note to reach, a broken rhythm between unequal notes, repeats left implicit.
ABC2MIDI_IDIOMS = re.compile(
    r"^(Guitar chord|Unrecognized chord name|Hornpipe must be|Could not find note to be tied|"
    r"Cannot apply broken rhythm|Missing :\| at end of tune|Expected end repeat not found|found \[1 or like before)"
)


# abc2midi "Warning" lines that mean it skipped or guessed part of the text: for a strict check, errors.
# (A back quote is legal: ABC 2.1 allows it between beamed notes for legibility.)
ABC2MIDI_GUESSES = re.compile(
    r"^(Ignoring reserved character [^`]|.*\bignored\b|No M: in header|Expecting fraction|No / found|Missing /|"
    r"invalid denominator|Invalid time signature)",
    re.IGNORECASE,
)


def _abc2midi_errors(tune: str, workdir: Path) -> list[str]:
    """abc2midi's findings for one tune. One run per tune: a tune that derails it cannot hide the next."""
    path = workdir / "tune.abc"
    path.write_text(f"X:1\n{tune.strip()}\n", encoding="utf-8")
    out = subprocess.run(["abc2midi", str(path), "-c"], capture_output=True, text=True, errors="replace", cwd=workdir)
    errors = []
    for match in re.finditer(r"^(Error|Warning) in line-char (\d+)-\d+ : (.*)$", out.stdout + out.stderr, re.MULTILINE):
        kind, message = match.group(1), match.group(3).strip()
        if (kind == "Error" and not ABC2MIDI_IDIOMS.match(message)) or (
            kind == "Warning" and ABC2MIDI_GUESSES.match(message)
        ):
            # Line numbers count the X: line the checker added.
            errors.append(f"line {int(match.group(2)) - 1}: {message}")
    return errors


def _without_index(tune: str) -> str:
    """The tune without its X: line (the checker numbers tunes itself)."""
    return "\n".join(line for line in tune.split("\n") if not line.startswith("X:"))


def resolve_checker(requested: str = "auto") -> str:
    if requested == "auto":
        return "abc2midi" if shutil.which("abc2midi") else "python"
    if requested == "abc2midi" and not shutil.which("abc2midi"):
        raise FileNotFoundError("abc2midi is not on PATH (Debian: apt-get install abcmidi); use --checker python")
    return requested


def check_tunes(tunes: list[str], checker: str = "auto") -> list[dict]:
    """One result per tune: {"checker", "valid", "errors", "bars_total", "bars_off"}."""
    checker = resolve_checker(checker)
    tunes = [_without_index(tune) for tune in tunes]
    reports = [analyse(tune, strict_syntax=checker == "python") for tune in tunes]
    if checker == "abc2midi":
        with tempfile.TemporaryDirectory() as tmp:
            for report, tune in zip(reports, tunes):
                report.errors[:0] = _abc2midi_errors(tune, Path(tmp))
    return [
        {"checker": checker, "valid": r.valid, "errors": r.errors, "bars_total": r.bars_total, "bars_off": r.bars_off}
        for r in reports
    ]


def _title(tune: str) -> str:
    return next((line[2:].strip() for line in tune.split("\n") if line.startswith("T:")), "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune.abc_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="ABC files (tune books or single tunes)")
    parser.add_argument("--checker", choices=CHECKERS, default="auto", help="abc2midi when on PATH, else python")
    args = parser.parse_args(argv)
    from .data import read_text

    try:
        checker = resolve_checker(args.checker)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in args.files:
        if not path.is_file():
            print(f"error: {path} is not a file; pass .abc files", file=sys.stderr)
            return 2
    for path in args.files:
        tunes = split_tunes(read_text(path))
        for index, (tune, result) in enumerate(zip(tunes, check_tunes(tunes, checker))):
            print(json.dumps({"file": str(path), "index": index, "title": _title(tune), **result}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
