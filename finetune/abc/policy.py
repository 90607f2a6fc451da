"""The meter policy: what may come next in a tune being written, asked of each token by the constraint's sampler.

`verdict(state, text)` says whether `text` may follow what `state.reader` has read, as a short run of named checks,
each refusing one thing. A text is refused when it would:

- break ABC syntax as the checker reads it (any new problem the reader records);
- make the current bar longer than M: and L: allow (tuplets, broken rhythm and chords counted). A note whose
  length is still being written is judged by the shortest it could still become, so `c` may be followed by `/`;
- end a section (`||`, `|]`, `:|`, `::`, or a `|:` or `[|` that opens the next) before it holds MIN_SECTION_BARS
  bars; only the opening pickup may stand alone before `|:`. Real tunes' sections are phrases of four bars and
  more, and a short section is where the meter's leave to close a bar short became a way out of every bar;
- close a bar short, except where ABC practice writes one: the opening pickup; a bar closing a section
  (`:|`, `||`, `|]`, an ending) that with the section's pickup makes one bar, or else is completed exactly by
  the bar after it; a section's pickup that completes the bar before its section bar; the last bar of the tune;
- change M:, L: or K: (an inline field), start a field line or a second voice, or write what the checker
  forgives in real tune books but a model has no need of: comments, non-ASCII text, free text in quotes
  (chord symbols `"Am7"` and one-word annotations `"^fine"` are kept), unnamed decorations, grace groups of
  non-notes, the spacer `y`;
- close a slur over no note (`( )`): what the checker refuses, and with `y` the filler of a model that cannot end;
- put a second mark (chord symbol, annotation or named decoration) before the note the first stands on, or a bar
  line between a mark and its note: tune books write one to a note, and a model that cannot end a tune would
  otherwise fill lines with `!diminuendo(!`;
- write what abc2midi does not read although ABC allows it (`Abc2midiQuirks`: a decoration, grace notes or a tie
  not followed by their note, a second `|:` or variant ending out of place, ...), a decoration abc2midi does not
  play, an octave mark against the letter's case (`e,`), an empty line (it ends a tune), a run of more than
  MAX_SPACES spaces or backquotes, or a bar with nothing in it (`| |`, `Reader.empty_bars`).

`may_end(state)` says whether the tune may end here: nothing left open, its last bar closed as a last bar may
close. `closes_bar` and `settles` serve the sampler's steering to an ending near its budget; `advance` feeds the
text a row has written. The policy knows nothing of tokens, models or torch: constrain.py searches the ranked
tokens with it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from fractions import Fraction

import regex

from .reader import (
    ANNOTATION_MARKS,
    CHORD_SYMBOL,
    SECTION_BAR,
    SECTION_START,
    Reader,
    named_decoration,
    token_may_begin,
    unit_length,
    whole_token,
)

# An inline field (a chord opens with a note instead): it could change what the prompt set, or start a voice.
FIXED_INLINE_FIELD = regex.compile(r"^\[(?![A-Ga-g])[A-Za-z]")
# What a tune body may hold once the model writes it: stricter than the checker, which must accept real tune books.
# Printable ASCII only (titles may carry any text, music does not); no comments, no field lines; chord symbols
# (`"Am7/G"`, reader.CHORD_SYMBOL) and annotations of one word (with a letter no note has), abbreviation or number
# as tune books write them (`"^fine"`, `"_D.C."`, `"^SEGUE"`, `"_4"`), so that no music hides in one and no blank
# or stray mark stands for one, rather than free text in quotes, one to a note (mark_waits); named decorations, one
# to a note too; notes in grace groups. No annotation holds three note letters in a row (`"^ABAGFGEMD."`), as no
# quoted string of the corpus does.
THREE_NOTES = regex.compile(r"[A-Ga-g]{3}")
BODY_TEXT = regex.compile(r"^[ -$&-\[\]-~\n]*$")
WRITTEN_TOKEN = regex.compile(
    r"""
    "(?:"""
    + CHORD_SYMBOL
    + "|["
    + regex.escape(ANNOTATION_MARKS)
    + r"""](?:(?:[A-Za-z][a-g]{0,8}[h-z][a-z]{0,8}|[H-Zh-z][a-z]{0,9}|[A-Z]{0,7}[H-Z][A-Z]{0,7})\.?|D\.[CS]\.|[0-9]{1,2}))"
  | !(?:mordent|turn|arpeggio|accent|fermata|wedge|breath|p{1,3}|mp|mf|f{1,3}|sfz|crescendo[()]|diminuendo[()]
        |[<>][()])!
  | \{/?(?:[\^_=]?(?:[A-G],{0,2}|[a-g]'{0,2})[1-4]?(?:/[248]?|//)?){1,8}\}
    """,
    regex.VERBOSE,
)
# Bar lines as tunes write them (`| 1`, `[|]`, `:::|` are ABC too, but no tune needs them), and note lengths:
# up to 16 units, halved up to three times; rests that sound (`z`): the invisible `x` is layout, which tune books
# hardly write, and the filler of a model that cannot end. Whole bars of rest (`Z`, `X`) stay: where a bar has
# come off the grid of eighths of a unit, they are what still closes it.
WRITTEN_BAR = regex.compile(r"\||\|\||\|\]|\|:|:\||::|\[\||\|\[?[12]|:\|\[?[12]|:\|\]|\[[12]")
BAR_START = regex.compile(r"^(?::|\||\[\||\[\d)")
WRITTEN_NOTE = regex.compile(r"(?:(?:\^\^|\^|__|_|=)?(?:[A-G],{0,3}|[a-g]'{0,3})|z)(?:[1-9]|1[0-6])?(?:/[248]?|//|///)?")
WRITTEN_CHORD_END = regex.compile(r"\](?:[1-9]|1[0-6])?(?:/[248]?|//|///)?")
WRITTEN_MEASURES = regex.compile(r"[ZX](?:[1-9][0-9]?)?")
WRITTEN_TUPLET = regex.compile(r"\([23]")  # duplets and triplets: what folk tunes use
# What may start after a one-character decoration, after grace notes and after a tie (abc2midi wants their
# note next: Abc2midiQuirks), and the one decoration a note may carry.
DECORATED = regex.compile(r"[\^_=A-Ga-gzx\[]")
GRACED = regex.compile(r"[\^_=A-Ga-g\[]")
TIED = regex.compile(r"[A-Ga-g\[| `y]")
ONE_DECORATION = regex.compile(r"[.~HLMOPSTuv]")
# Kinds of pending tokens whose length can still shrink (`c` -> `c/`), and how they shrink.
SHRINKABLE = ("note", "rest", "chord_end")
SHRINK = ("", "/", "//", "///")
# and how a note whose length is not written yet may still grow (in a tuplet, `(3d4c2B` needs its `3`).
GROW = tuple(str(n) for n in range(2, 17))
LENGTH_GROUPS = ("len", "rlen", "clen")
SHORTEST = Fraction(1, 8)  # of a unit: a note halved three times
# Slurs open at once (real tunes nest two at most).
MAX_SLURS = 2
OCTAVE_MARKS = ("'", "''", ",", ",,")
EMPTY_LINE = regex.compile(r"\n[ \t]*\n")
# Tunes align bars with runs of spaces: 2 to 4 are three in four of the training tunes' runs.
MAX_SPACES = 4
LONG_LAYOUT_RUN = regex.compile(rf"[ `]{{{MAX_SPACES + 1}}}")  # backquotes too: ABC's beam spacing, no music

# Bar lines that end a section, and the fewest bars a section holds (counting its pickup) before one may close it.
SECTION_EDGE = regex.compile(rf"{SECTION_START.pattern}|:\|")
MIN_SECTION_BARS = 4

# What a verdict says once a text is read: what the next bar must last to complete a bar split around a repeat
# (None when nothing is owed), and the index of the first bar of the current section.
Verdict = tuple[Fraction | None, int]


@dataclass
class TuneState:
    """A tune being written: its reader, with what the meter policy remembers about its bars."""

    reader: Reader
    owed: Fraction | None = None  # what the next bar must last to complete a bar split around a repeat
    opening: int = 0  # index of the first bar of the current section
    spacing: str = "\n"  # the text since the last line break (or its last character): see _spaced


def _promised(reader: Reader) -> Fraction:
    """The least that notes the text has already committed to will last: the note an accidental or a broken rhythm
    calls for (after `c<`, d counts 3/2: at its shortest on the grid of eighths of a unit, 3/8) and the rest of a
    tuplet."""
    promised = Fraction(0)
    if reader.pending_broken != 1 or reader.pending[:1] in ("^", "_", "=", "{") or reader.abc2midi.decorated or reader.abc2midi.graced:
        promised += SHORTEST * reader.pending_broken.numerator
    if reader.tuplet_left:
        promised += SHORTEST * reader.tuplet_ratio * reader.tuplet_left
    return promised


def _reachable(reader: Reader, limit: Fraction) -> bool:
    """Can the open bar still end at exactly `limit`? The notes promised must fit, and outside a tuplet the bar
    must hold whole eighths of a unit, which written notes can complete (after `(3abc2`, 8/3 units, only another
    tuplet could)."""
    if reader.current + _promised(reader) > limit:
        return False
    return bool(reader.tuplet_left) or (reader.current / SHORTEST).denominator == 1


def _spaced(text: str) -> bool:
    """No empty line (in ABC it ends the tune) and no run of more than MAX_SPACES spaces or backquotes: tunes align
    their bars with a few, and a model could otherwise fill a bar's wait with them (`text` starts at the last line
    break)."""
    return LONG_LAYOUT_RUN.search(text) is None and EMPTY_LINE.search(text) is None


def _line_tail(text: str) -> str:
    """What _spaced needs of the text so far: from its last line break if the line holds only white space, else
    its last character with the spaces and backquotes after it."""
    line = text[text.rfind("\n"):] if "\n" in text else text
    return line if not line.strip() else text[max(len(text.rstrip(" `")) - 1, 0):]


def _read(reader: Reader, text: str) -> Reader:
    """Feed `text` to `reader`. A bar line followed by a space is emitted at once: the reader holds `| ` open since
    ABC lets `| 1` and `| [1` open a variant ending, which no tune writes with the space (WRITTEN_BAR), so judged
    open it would refuse the space after every bar line."""
    reader.feed(text)
    if reader.pending.endswith(" ") and BAR_START.match(reader.pending):
        reader.flush()
    return reader


def _nothing_open(reader: Reader) -> bool:
    """Nothing the text has opened waits for more: no chord, slur, tuplet, broken rhythm, decoration, tie or grace
    notes."""
    return (
        reader.chord is None and reader.slurs == 0 and reader.tuplet_left == 0 and reader.pending_broken == 1
        and not reader.abc2midi.decorated and not reader.abc2midi.tied and not reader.abc2midi.graced
    )


def whole_pending(pending: str) -> regex.Match | None:
    """The token being written, if it is one whole token already."""
    token = whole_token(pending) if pending else None
    return token[0] if token else None


@functools.lru_cache(maxsize=1 << 16)
def _written_as_tunes_write(pending: str) -> bool:
    """Could the token being read still become one that real tunes write (see WRITTEN_*)?"""
    if not pending:
        return True
    first = pending[0]
    if first in '"!+{':
        annotation = first == '"' and len(pending) > 1 and pending[1] in ANNOTATION_MARKS
        return bool(WRITTEN_TOKEN.fullmatch(pending, partial=True)) and not (annotation and THREE_NOTES.search(pending))
    if BAR_START.match(pending):
        return bool(WRITTEN_BAR.fullmatch(pending, partial=True))
    if first == "]":
        return bool(WRITTEN_CHORD_END.fullmatch(pending, partial=True))
    if first == "(" and len(pending) > 1:
        return bool(WRITTEN_TUPLET.fullmatch(pending, partial=True))
    if first in "^_=zxABCDEFGabcdefg":
        return bool(WRITTEN_NOTE.fullmatch(pending, partial=True))
    if first in "ZX":
        return bool(WRITTEN_MEASURES.fullmatch(pending, partial=True))
    return "y" not in pending  # ABC's spacer `y` is layout that tune books hardly write, and lines of it fill a wait


def advance(state: TuneState, text: str) -> None:
    """Feed the text a tune has just written, and update what the policy remembers of its bars."""
    state.spacing = _line_tail(state.spacing + text)
    closed = len(state.reader.bars)
    _read(state.reader, text)
    closing = close_bars(state, state.reader, since=closed)
    state.owed, state.opening = closing if closing is not None else (None, len(state.reader.bars))


def verdict(state: TuneState, text: str, meter: bool = True) -> Verdict | None:
    """(owed, opening) after `text` if it is allowed, else None; with `meter` False, judge the syntax only."""
    before = state.reader
    if before.in_body and not laid_out_as_tunes_are(state, text):
        return None
    reader, tokens = read_ahead(before, text)
    if not syntax_kept(before, reader, tokens) or before.in_body and not (
        body_may_go_on(reader) and one_mark_to_a_note(state, reader, tokens)
    ):
        return None
    complete = whole_pending(reader.pending)
    if reader.pending and complete is None and BAR_START.match(reader.pending):
        return completed_by(state, text, "|:]")  # half a bar line (`:` of `:|`), if a character more makes one
    done = as_written_so_far(before, reader, complete)
    if done is None or not abc2midi_reads(before, reader, done) or not voice_and_header_kept(before, done):
        return None
    if not meter:
        return state.owed, state.opening
    return meter_verdict(state, text, reader, done, complete)


def laid_out_as_tunes_are(state: TuneState, text: str) -> bool:
    """Body text as BODY_TEXT allows, with no empty line and no long run of spaces (_spaced)."""
    return bool(BODY_TEXT.match(text)) and _spaced(state.spacing + text)


def read_ahead(before: Reader, text: str) -> tuple[Reader, list[str]]:
    """A copy of the reader with `text` read, and (in the body) every token the text completed, not only the one it
    leaves open."""
    reader, tokens = before.copy(), []
    if before.in_body:
        reader.listener = lambda kind, piece: kind == "token" and tokens.append(piece.group())
    _read(reader, text)
    reader.listener = None
    return reader, tokens


def syntax_kept(before: Reader, reader: Reader, tokens: list[str]) -> bool:
    """Every token completed is one tunes write; no new problem, no second voice, slurs no deeper than MAX_SLURS,
    nothing new that abc2midi refuses."""
    return (
        all(_written_as_tunes_write(token) for token in tokens)
        and len(reader.problems) <= len(before.problems) and not reader.multi_voice and reader.slurs <= MAX_SLURS
        and reader.abc2midi.count <= before.abc2midi.count
    )


def body_may_go_on(reader: Reader) -> bool:
    """In the body: no field line or fixed inline field; a letter opening a line is a note, not a field; the token
    being written can still become one tunes write; after a decoration, grace notes or a tie, only what may carry
    it (a note, a rest, a chord)."""
    pending, quirks = reader.pending, reader.abc2midi
    return not (
        reader.field_line is not None
        or FIXED_INLINE_FIELD.match(pending)
        # a letter that opens a line is held until the next character says field or note: it must be a note
        or (reader.line_start and pending and not token_may_begin(pending))
        or not _written_as_tunes_write(pending)
        or quirks.decorated and pending and not DECORATED.match(pending)
        or quirks.graced and pending and not GRACED.match(pending)
        or quirks.tied and pending and not TIED.match(pending)
    )


def marks_wait(reader: Reader) -> bool:
    """A chord symbol, an annotation or a named decoration read since the last note, rest or chord waits for it."""
    return reader.symbols_in_a_row > 0 or reader.decorations_in_a_row > 0


def mark_waits(waiting: bool, tokens: list[str]) -> bool | None:
    """Whether a chord symbol, annotation or named decoration (a mark) waits for its note once `tokens` are read
    after a state where one did (`waiting`: marks_wait); None where one is refused. Tune books put one mark on a
    note, rest or chord, so that neither a second mark nor a bar line comes between a mark and its note: a model
    could otherwise write quoted text for bars on end (`"Am" "> " "B2" |`), or lines of `!diminuendo(!` where it
    cannot end, which abc2midi passes."""
    for token in tokens:
        found = whole_token(token)
        kind = found[1] if found else None
        if kind == "symbol" or named_decoration(kind, token):
            if waiting:
                return None
            waiting = True
        elif kind in ("note", "rest", "chord_start"):
            waiting = False
        elif kind == "bar" and waiting:
            return None
    return waiting


def one_mark_to_a_note(state: TuneState, reader: Reader, tokens: list[str]) -> bool:
    """No second mark and no bar line between a chord symbol, annotation or named decoration and its note
    (mark_waits), counting the token being written."""
    waits = mark_waits(marks_wait(state.reader), tokens)
    if waits is None:
        return False
    return not (waits and reader.pending and (reader.pending[0] in '"!' or BAR_START.match(reader.pending)))


def completed_by(state: TuneState, text: str, characters: str) -> Verdict | None:
    """The verdict on `text` completed by the first of `characters` that makes it allowed, if any (`:` may become
    `:|`, `|` may become `|:`); a text of 8 characters or more is not completed."""
    if len(text) >= 8:
        return None
    for character in characters:
        found = verdict(state, text + character)
        if found is not None:
            return found
    return None


def as_written_so_far(before: Reader, reader: Reader, complete: regex.Match | None) -> Reader | None:
    """The reader as if the text ended here: the token being written emitted if it is whole (a token half written,
    `"Am` or `!tr`, lasts nothing and is judged once whole); None if emitting it is a problem."""
    if reader.pending and complete is None:
        return reader
    done = reader.copy()
    done.flush()
    return done if len(done.problems) <= len(before.problems) else None


def abc2midi_reads(before: Reader, reader: Reader, done: Reader) -> bool:
    """Nothing new that abc2midi refuses (but a tied note that may yet take the octave marks of the note before),
    and one decoration to a note, as tunes write."""
    return not (
        done.abc2midi.count > before.abc2midi.count and not octave_may_mend(before, reader)
        or done.abc2midi.decorated and not ONE_DECORATION.fullmatch(done.abc2midi.decorated)
    )


def voice_and_header_kept(before: Reader, done: Reader) -> bool:
    """One voice, slurs no deeper than MAX_SLURS and each over a note, and in the body M:, L: and K: as the prompt
    set them."""
    return not (
        done.multi_voice or done.slurs > MAX_SLURS or done.empty_slurs > before.empty_slurs
        or before.in_body and (done.meter, done.unit, done.key) != (before.meter, before.unit, before.key)
    )


def meter_verdict(state: TuneState, text: str, reader: Reader, done: Reader, complete: regex.Match | None) -> Verdict | None:
    """The meter's part: no bar line inside a tuplet, bars close as ABC practice closes them, the rest of a bar split
    around a repeat follows the repeat at once, no bar without music, and the open bar can still be completed."""
    before = state.reader
    if len(done.bars) > len(before.bars) and done.tuplet_left:
        return None
    closed = close_bars(state, done)
    if closed is None:
        if complete is not None and complete.group("bar") is not None:
            return bar_may_grow(state, reader)  # `|` may yet become `||`, `|]` or `|:`
        return None
    owed, _ = closed
    if owed is not None and not SECTION_BAR.search(done.before):
        return None  # `|:|` would part the halves of a bar split around a repeat
    if done.empty_bars > before.empty_bars:  # a bar without music; `|` may yet open a repeat or an ending
        if complete is None or complete.group("bar") is None:
            return None
        return completed_by(state, text, ":12[")
    wanted = done.wanted()
    if wanted is not None and not room(before, reader, done, owed if owed is not None else wanted):
        return None
    return closed


def octave_may_mend(before: Reader, reader: Reader) -> bool:
    """Is the note being written tied to, and may it yet take the octave marks of, the note before (`g` of
    `g'-g'`)? Judged as it stands it is of another pitch."""
    complete = whole_pending(reader.pending)
    if not reader.abc2midi.tied or complete is None or complete.group("note") is None:
        return False
    for marks in OCTAVE_MARKS:
        grown = reader.copy().feed(marks)
        grown.flush()
        if grown.abc2midi.count == before.abc2midi.count and len(grown.problems) == len(before.problems):
            return True
    return False

def room(before: Reader, reader: Reader, done: Reader, limit) -> bool:
    """Can the open bar still keep within `limit`: as it stands, or once the note or chord being written is
    shortened (`c` -> `c/`, `[ce]` -> `[ce]/`) as far as tunes shorten notes (three halvings), or given the
    length it has not written yet (`c` -> `c3`)?"""
    if done.chord is None and _reachable(done, limit):
        return True
    complete = whole_pending(reader.pending)
    shrinkable = complete is not None and any(complete.group(kind) is not None for kind in SHRINKABLE)
    # growing helps only in a tuplet, whose notes leave the grid of eighths; elsewhere longer never fits better
    grows = shrinkable and reader.tuplet_left and not any(complete.group(group) for group in LENGTH_GROUPS)
    lengths = SHRINK + GROW if grows else SHRINK
    for suffix in lengths if shrinkable else ("",):
        if suffix and not _written_as_tunes_write(reader.pending + suffix):
            continue  # a length no tune writes (`E////`) is one the policy will refuse: no way out of the bar
        probe = reader.copy().feed(suffix)
        probe.flush()
        closings = [""] if probe.chord is None else ["]" + s for s in lengths]
        for closing in closings:
            closed = probe.copy().feed(closing) if closing else probe
            closed.flush()
            if len(closed.problems) == len(before.problems) and closed.chord is None and _reachable(closed, limit):
                return True
    return False

def close_bars(state: TuneState, done: Reader, since: int | None = None):
    """(owed, opening) after the bars `done` closed since the row's reader (or bar `since`); None if one may not."""
    owed, opening = state.owed, state.opening
    for index in range(len(state.reader.bars) if since is None else since, len(done.bars)):
        verdict = bar_closes(done.bars, index, owed, opening)
        if verdict is None:
            return None
        owed, opening = verdict
    return owed, opening

def bar_may_grow(state: TuneState, reader: Reader):
    """A bar line refused as it stands (`|`) is kept if one more character makes it an allowed one (`|]`)."""
    for extra in ("]", ":", "|"):
        done = reader.copy().feed(extra)
        done.flush()
        if len(done.problems) == len(state.reader.problems) and close_bars(state, done) is not None:
            return state.owed, state.opening
    return None

def bar_closes(bars, index: int, owed, opening: int):
    """(owed, opening) once bar `index` has closed, if ABC practice allows it to close as it is; else None."""
    bar = bars[index]
    if index and SECTION_START.search(bar.before):  # as the checker's section_openings reads it (`:| |:`
        opening = index  # leaves an empty bar between the bar closed at `:|` and this one)
    next_opening = index + 1 if SECTION_START.search(bar.after) else opening
    if index and SECTION_EDGE.search(bar.after) and index - opening + 1 < MIN_SECTION_BARS:
        return None
    if bar.wanted is None:
        return None, next_opening
    if not bar.readable or bar.duration > (owed if owed is not None else bar.wanted):
        return None
    if owed is not None:
        return (None, next_opening) if bar.duration == owed else None
    if bar.duration == bar.wanted or index == 0:
        return None, next_opening
    previous = bars[index - 1]
    if (previous.line_end or SECTION_BAR.search(bar.before)) and previous.duration + bar.duration == bar.wanted:
        return None, next_opening  # a section's pickup, completing the bar before the repeat (`G2G G2:|d|`)
    if not SECTION_BAR.search(bar.after):
        return None
    if opening < index and bars[opening].duration + bar.duration == bar.wanted:
        return None, next_opening
    owed = bar.wanted - bar.duration
    # the other half must be one that written notes can fill (not the 1/3 a tuplet left over)
    return (owed, next_opening) if (owed / SHORTEST).denominator == 1 else None

def closes_bar(state: TuneState, text: str) -> bool:
    """Near the budget: does `text` close the open bar (as the tune's last bar, which may be short)?"""
    before = state.reader
    done = before.copy().feed(text)
    done.flush()
    if len(done.problems) > len(before.problems) or done.chord is not None or done.abc2midi.count > before.abc2midi.count:
        return False
    if len(done.bars) <= len(before.bars):  # no music since the last bar line: it may close a variant ending
        return before.abc2midi.ending_open and not done.abc2midi.ending_open and not done.has_notes
    # and nothing open waits for more music, which would make this short bar one inside the tune
    return not done.has_notes and _nothing_open(done) and may_close_last(state, done)

def may_close_last(state: TuneState, done: Reader) -> bool:
    """The tune's last bar may be short (it balances the pickup, or simply ends the tune), never long; after a
    bar split around a repeat it must be that bar's other half; and it may not cut an accompaniment's beat."""
    bar = done.bars[-1]
    if not done.abc2midi.may_stop_after(bar, unit_length(done.meter, done.unit)):
        return False
    if bar.wanted is None:
        return True
    return bar.duration == state.owed if state.owed is not None else bar.duration <= bar.wanted

def settles(state: TuneState, text: str) -> bool:
    """Near the budget: is `text` allowed and does it leave no token, chord or group half-written?"""
    if verdict(state, text) is None:
        return False
    reader = _read(state.reader.copy(), text)
    return (not reader.pending or whole_pending(reader.pending) is not None) and reader.chord is None

def may_end(state: TuneState) -> bool:
    """The tune may end here, as the checker would read it ending here (`Reader.finish`): in the body, with
    nothing left open, its last bar closed by a bar line or by the end itself (tunes of the Essen collection
    end `E4z2` and a line break), as a last bar may close."""
    reader = state.reader
    if not reader.in_body or reader.field_line is not None:
        return False
    done = reader.copy().finish()
    if not done.bars or len(done.problems) > len(reader.problems) or done.abc2midi.count > reader.abc2midi.count:
        return False
    if len(done.bars) > len(reader.bars) and not may_close_last(state, done):
        return False
    if mark_waits(marks_wait(reader), [reader.pending] if reader.pending else []) is not False:
        return False  # a mark with no note to stand on
    return (
        _nothing_open(done)
        and not done.abc2midi.ending_open  # abc2midi wants the last variant ending closed (`|]`, `||`, `:|`)
        and done.abc2midi.may_stop_after(done.bars[-1], unit_length(done.meter, done.unit))
        and not done.last_bar.endswith(":")  # no repeat opened at the very end (`|:`, `::`)
    )
