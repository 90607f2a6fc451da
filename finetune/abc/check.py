"""Check ABC tunes strictly: syntax, header fields and bar durations; music21 would accept most broken tunes.

    python -m finetune.abc.check FILE.abc [FILE.abc ...] [--checker auto|abc2midi|python]

prints one JSON object per tune: {"file", "index", "title", "checker", "valid", "errors", "bars_total",
"bars_off"}, and exits 0 (tunes that fail are findings, not failures of the command).

Syntax is judged by `abc2midi` (Debian package abcmidi, the strictest checker in common use; it always
exits 0, so its "Error" lines are read) when it is on PATH, and otherwise by the problems the one ABC reader
(reader.py) records. Bar durations are always measured by that reader, so both checkers count bars alike.

A bar counts when it holds notes or rests, and is *off* when it could not all be read, or its duration
differs from what `M:` and `L:` ask for, except for the short bars that ABC practice writes on purpose
(`reader.bar_fits`): the opening pickup, the last bar, a bar that with its neighbour across a repeat, section
mark or line end makes one whole bar, and a bar closing a section that with the section's pickup makes one.
A full bar at the end of a line closes there even without a bar line, as the Essen collection writes phrases.
abc2midi's "Error" lines for idioms real tune books use are not counted, and its warnings that it skipped
or guessed part of the text are (see ABC2MIDI_IDIOMS and ABC2MIDI_GUESSES).

A tune is valid when its syntax is clean, K: is present, M:/L:/K: are well-formed, no off bar has a
length found nowhere else in the tune (a broken bar; a length that recurs is the tune's own, often a
meter M: does not state), at least half of its bars keep the meter, no SYMBOL_HEAP chord symbols or
annotations stand in a row with no note between them (quoted text in place of music), no quoted string holds
music (`reader.hides_music`: `"B22/B"`, `"^d2 e2"`), and no slur closes over no note (`( )`, a sampler's
filler). `bars_off` counts every off bar.
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
from pathlib import Path

from .reader import bar_fits, read, section_openings
from .text import read_text, split_tunes

CHECKERS = ("auto", "abc2midi", "python")
# Quoted strings in a row with no note under them that make a heap: real tune books write two at most (an annotation
# beside a chord symbol); abc2midi plays a heap as chords over nothing and passes it.
SYMBOL_HEAP = 3
# Named decorations (`!f!`) in a row with no note under them: the corpus's tunes never write two.
DECORATION_HEAP = 3
# abc2midi reads a tune in milliseconds; a run past this is stuck on the text, which is a finding.
ABC2MIDI_SECONDS = 10


@dataclass
class TuneReport:
    """What the checker found in one tune."""

    errors: list[str] = field(default_factory=list)
    bars_total: int = 0
    bars_off: int = 0

    @property
    def valid(self) -> bool:
        return not self.errors


def analyse(tune: str, strict_syntax: bool = True) -> TuneReport:
    """Header checks and bar durations for one tune; with `strict_syntax`, also every syntax problem.

    Any text gives a report: what is not ABC is a problem of the tune, never an exception.
    """
    reader = read(tune)
    report = TuneReport(errors=list(reader.problems) if strict_syntax else [])
    if not reader.key_line:
        report.errors.append("no K: field (every tune needs a key)")
    if reader.most_symbols >= SYMBOL_HEAP:
        report.errors.append(f"{reader.most_symbols} chord symbols or annotations in a row with no note between them")
    if reader.empty_slurs:
        report.errors.append(f"{reader.empty_slurs} slurs with no note in them")
    if reader.hidden_music:
        report.errors.append(f"music written in quotes, where it is not played: {reader.hidden_music}")
    if reader.most_decorations >= DECORATION_HEAP:
        report.errors.append(f"{reader.most_decorations} decorations in a row with no note between them")
    if reader.multi_voice:
        return report  # voices overlap in time; bar sums of one interleaved line mean nothing
    bars, openings = reader.bars, section_openings(reader.bars)
    verdicts = [bar_fits(bars, i, openings) for i in range(len(bars))]
    report.bars_total = sum(v is not None for v in verdicts)
    report.bars_off = verdicts.count(False)
    lengths = Counter(bar.duration for bar in bars)
    for number, (bar, fits) in enumerate(zip(bars, verdicts), start=1):
        if fits is False and bar.readable and lengths[bar.duration] == 1:
            report.errors.append(f"bar {number} lasts {bar.duration} units, M: and L: want {bar.wanted}")
    if report.bars_off * 2 > report.bars_total:
        report.errors.append(f"{report.bars_off} of {report.bars_total} bars are off the meter that M: and L: give")
    return report


# abc2midi "Error" lines for idioms that real tune books use and that abc2midi itself plays anyway: a
# quoted string used as an annotation ("pp", "cresc.") rather than a guitar chord, R:hornpipe in 6/8, a
# tie with no note to reach, a broken rhythm between unequal notes, repeats left implicit, an I: instruction
# it does not know (tune books write `I: :: ::` and other software's settings there).
ABC2MIDI_IDIOMS = re.compile(
    r"^(Guitar chord|Unrecognized chord name|Hornpipe must be|Could not find note to be tied|"
    r"Cannot apply broken rhythm|Missing :\| at end of tune|Expected end repeat not found|found \[1 or like before|"
    r"I: key .* not recognized)"
)


# abc2midi "Warning" lines that mean it skipped or guessed part of the text: for a strict check, errors.
# (A back quote is legal: ABC 2.1 allows it between beamed notes for legibility.)
ABC2MIDI_GUESSES = re.compile(
    r"^(Ignoring reserved character [^`]|.*\bignored\b|No M: in header|Expecting fraction|No / found|Missing /|"
    r"invalid denominator|Invalid time signature)",
    re.IGNORECASE,
)


def run_abc2midi(source: str, workdir: Path, *flags: str, seconds: float = ABC2MIDI_SECONDS):
    """abc2midi over `source` (ABC with its X: line) written to a file in `workdir`, with `flags` (`-c`: check only;
    `-o FILE`: write the MIDI there): the finished process, or None if it ran past `seconds`."""
    path = workdir / "tune.abc"
    # NUL cannot pass through abc2midi's C strings; a tune that holds one is flagged by the Python reader.
    path.write_text(source.replace("\0", " "), encoding="utf-8", errors="replace")
    try:
        return subprocess.run(
            ["abc2midi", str(path), *flags], capture_output=True, text=True, errors="replace", cwd=workdir, timeout=seconds
        )
    except subprocess.TimeoutExpired:
        return None


def _abc2midi_errors(tune: str, workdir: Path) -> list[str]:
    """abc2midi's findings for one tune. One run per tune: a tune that derails it cannot hide the next."""
    out = run_abc2midi(f"X:1\n{tune.strip()}\n", workdir, "-c")
    if out is None:
        return [f"abc2midi gave up on the tune after {ABC2MIDI_SECONDS} s"]
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


def summarize(results: list[dict]) -> dict:
    """The share of tunes that are valid and of bars on the meter, over `check_tunes` results."""
    bars = sum(r["bars_total"] for r in results)
    return {
        "validity": sum(r["valid"] for r in results) / len(results) if results else float("nan"),
        "bar_consistency": 1 - sum(r["bars_off"] for r in results) / bars if bars else float("nan"),
        "bars_total": bars,
    }


def _title(tune: str) -> str:
    return next((line[2:].strip() for line in tune.split("\n") if line.startswith("T:")), "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune.abc.check", description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="ABC files (tune books or single tunes)")
    parser.add_argument("--checker", choices=CHECKERS, default="auto", help="abc2midi when on PATH, else python")
    args = parser.parse_args(argv)
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
