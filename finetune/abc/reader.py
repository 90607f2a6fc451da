"""The one reader of ABC 2.1 tune text: fed a character at a time, it knows at every point what a bar lasts.

`Reader().feed(text)` then `.finish()` reads a whole tune; the sampler feeds it token by token and copies it to
try a continuation, so it never re-reads a tune from its start. It reads header and inline fields (M: L: K: V:),
notes with accidentals, octaves and lengths, rests, multi-bar rests, chords, broken rhythm, tuplets, grace notes,
ties, slurs, decorations, annotations, bar lines, repeats and endings, and records:

- `bars`: every bar that holds notes or rests, with its length in L: units, what M:/L: ask for, the bar lines
  around it, whether it ends its line, and whether all of its text could be read;
- `problems`: text that is not ABC (an unexpected character, a zero or absurd length, a malformed field).

It never raises, whatever the text: a problem is recorded and reading goes on. `bar_fits` says which bars keep
the meter, with the short bars that ABC practice writes on purpose (pickups, bars split around repeats). What
abc2midi refuses although ABC allows it is not a problem of the text: the reader tells `Abc2midiQuirks` each
token, bar line and line end, and it counts those for the sampler (policy.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from fractions import Fraction

import regex

# Lengths and counts longer than this are not music (Python would also refuse to parse a 5,000-digit number).
MAX_DIGITS = 4
# The longest token read: annotations and decorations are short; an unclosed quote must not hold the line.
MAX_TOKEN = 256

METER = regex.compile(r"^\s*(?:(\d{1,4}(?:\+\d{1,4})*)\s*/\s*(\d{1,4})|(C\|?)|(none))\s*$", regex.IGNORECASE)
UNIT = regex.compile(r"^\s*1\s*/\s*(1|2|4|8|16|32|64)\s*$")
KEY = regex.compile(
    r"^\s*(?:none|HP|Hp|[A-G][#b]?\s*(?:maj\w*|min\w*|m|mix\w*|dor\w*|phr\w*|lyd\w*|loc\w*|aeo\w*|ion\w*|exp\w*)?)"
    r"(?:\s+(?:[_^=]+[a-gA-G]|\w+=\S+|[a-z]+|-?\d+))*\s*$",
    regex.IGNORECASE,
)

# One token of a tune body (ABC 2.1, section 4). The reader takes the longest text that matches.
TOKEN = regex.compile(
    r"""
    (?P<space>[ \t`y]+)
  | (?P<continuation>\\)
  | (?P<comment>%[^\n]*)
  | (?P<field>\[[A-Za-z]:[^\]\n]*\])
  | (?P<bar>:*\[?\|+\]?:*(?:\ ?\[?\d+(?:[,-]\d+)*)?|::+(?:\d+(?:[,-]\d+)*)?|\[\d+(?:[,-]\d+)*)
  | (?P<note>(?P<acc>\^\^|\^|__|_|=)?(?P<pitch>[A-Ga-g])(?P<octave>[,']*)(?P<len>\d*/*\d*))
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
    regex.VERBOSE,
)
TOKEN_KINDS = ("space", "continuation", "comment", "field", "bar", "note", "rest", "measures", "chord_start",
               "chord_end", "grace", "symbol", "decoration", "tuplet", "slur", "tie", "broken", "overlay")
# Decorations abc2midi cannot put on a chord.
ROLLS = ("~", "T")
# Bar lines that open or close a section: repeats, double bars, endings.
SECTION_BAR = regex.compile(r":|\|\||\|\]|\[\||\d")
SECTION_START = regex.compile(r"\|:|::|\|\||\[\||\|\]")
# abc2midi plays chord symbols ("G", "Am7") as an accompaniment that beats through every bar; a tune that stops
# inside a sounding beat leaves its chord on ("Sustained notes beyond end of track"). Measured in 2/4 to 12/8, 5/4
# and 7/4, with and without pickups: stopping on a quarter note of the last bar, or at its full length, is safe.
ACCOMPANIMENT_STEP = Fraction(1, 4)
LENGTH = regex.compile(r"(\d*)(/*)(\d*)")
# A chord symbol as tune books write one: a root, a quality, the extension numbers chords use and a bass note
# (`Am7/G`, `Gsus4`, `C7b9`); a root followed by any other number is a note and its length in quotes (`"B2"`).
CHORD_SYMBOL = r"[A-G][\#b]?(?:m|min|maj|dim|aug|sus)?(?:6|7|9|11|13)?(?:(?:add|sus)[249]|b5|b9|\#5|\#9|\#11)?(?:/[A-Ga-g][\#b]?)?"
# What opens an annotation rather than a chord symbol: where to print it (above, below, left, right, anywhere).
ANNOTATION_MARKS = "^_<>@"
# Four note letters in a row in quoted text other than a chord symbol (`"^ABAGFGEMD."`): no quoted string of the
# corpus has even three.
NOTE_LETTERS = regex.compile(r"[A-Ga-g]{4}")
# A word of an annotation that reads as music: notes with their lengths, slurs, ties and broken rhythm
# (`d2`, `(3Adc`, `f>d)`, `DEG`; a lone letter is a word of text). Two such words in one quoted string, or one of
# four notes or more, are music hidden from the player; tune books write `"_D2"` and `"DC"`.
MUSIC_WORD = regex.compile(r"(?=.*[A-Ga-g])(?:\(\d?|[\^_=]?[A-Ga-g][,']*\d*(?:/\d*)?|[-<>)])+")


@functools.lru_cache(maxsize=4096)
def parse_length(text: str) -> Fraction | None:
    """`3/2` -> 3/2, `/` -> 1/2, `//` -> 1/4, `3` -> 3, `` -> 1 (in units of L:); None if it is no length."""
    match = LENGTH.fullmatch(text)
    if not match or len(match.group(1)) > MAX_DIGITS or len(match.group(3)) > MAX_DIGITS or len(match.group(2)) > MAX_DIGITS:
        return None
    numerator = int(match.group(1)) if match.group(1) else 1
    slashes, denominator = match.group(2), match.group(3)
    if not slashes:
        return Fraction(numerator) if numerator else None
    if denominator and int(denominator) == 0 or not numerator:
        return None
    return Fraction(numerator, int(denominator) if denominator else 2 ** len(slashes))


def parse_meter(value: str) -> Fraction | None | str:
    """The bar length as a fraction of a whole note; None for `M:none`; the string "bad" if it is no meter."""
    match = METER.match(value)
    if not match:
        return "bad"
    if match.group(1):
        numerator, denominator = sum(int(n) for n in match.group(1).split("+")), int(match.group(2))
        return Fraction(numerator, denominator) if numerator and denominator else "bad"
    if match.group(3):
        return Fraction(1) if match.group(3) == "C" else Fraction(2, 2)
    return None


@functools.lru_cache(maxsize=256)
def bar_units(meter: Fraction | None, unit: Fraction | None) -> Fraction | None:
    """What a bar lasts in units of L: (`unit`, else M:'s default) under `meter`; None for free meter."""
    return meter / unit_length(meter, unit) if meter is not None else None


def unit_length(meter: Fraction | None, unit: Fraction | None) -> Fraction:
    """The L: in effect, as a fraction of a whole note: `unit`, else M:'s default (ABC 2.1, 3.1.7: 1/16 for
    meters below 3/4, else 1/8)."""
    return unit or (Fraction(1, 16) if meter is not None and meter < Fraction(3, 4) else Fraction(1, 8))


@functools.lru_cache(maxsize=1 << 16)
def whole_token(text: str) -> tuple[regex.Match, str] | None:
    """`text` read as one token: (its match, its kind of TOKEN_KINDS), or None. Memoized, as is
    `token_may_begin`: tunes repeat a few hundred tokens, and the sampler asks about each again at every step."""
    match = TOKEN.fullmatch(text)
    return (match, next(name for name in TOKEN_KINDS if match.group(name) is not None)) if match else None


@functools.lru_cache(maxsize=1 << 16)
def token_may_begin(text: str) -> bool:
    """Could some token still begin with `text`?"""
    return TOKEN.fullmatch(text, partial=True) is not None


def named_decoration(kind: str | None, text: str) -> bool:
    """Whether a token of `kind` is a named decoration (`!fermata!`, `+trill+`), which stands on the note after it as
    a chord symbol does, rather than a one-character one (`~`, `.`, `H`), which abc2midi ties to its note."""
    return kind == "decoration" and len(text) > 1


def hides_music(quoted: str) -> bool:
    """Whether a quoted string (`"Am7"`, `"^fine"`, without its quotes) holds music rather than a chord symbol or
    text: a root with a number no chord writes (`"B22/B"`), a run of note letters (NOTE_LETTERS), or words that read
    as notes (`"^d2 e2"`, MUSIC_WORD)."""
    if regex.fullmatch(CHORD_SYMBOL, quoted):
        return False
    if quoted[:1] in "ABCDEFG" and any(c.isdigit() for c in quoted) or NOTE_LETTERS.search(quoted):
        return True
    words = [word.rstrip(".,;:!") for word in quoted.lstrip(ANNOTATION_MARKS).split()]
    music = [word for word in words if len(word) > 1 and MUSIC_WORD.fullmatch(word)]
    return len(music) >= 2 or any(sum(c in "ABCDEFGabcdefg" for c in word) >= 4 for word in music)


def is_triple(value: str) -> bool:
    """Whether an M: value's written numerator is a multiple of 3 (6/8, 12/8, 3+3/8, 3/4): read from the text, since
    the bar length reduces 6/8 to 3/4 and 12/8 to 3/2."""
    match = METER.match(value)
    return bool(match and match.group(1)) and sum(int(n) for n in match.group(1).split("+")) % 3 == 0


def tuplet_default_q(p: int, triple: bool) -> int:
    """ABC 2.1, 4.13: (2 is two in the time of three, (3 three in the time of two; (5 (7 (9 in the time of three
    where the meter's numerator is a multiple of 3, else of two. (ABC 2.1 says "compound time"; abc2midi, which
    plays the tunes and checks them, takes 3/4 and 3/8 as well: measured in tests/abc/test_check.py.)"""
    if p in (2, 4, 8):
        return 3
    if p in (3, 6):
        return 2
    return 3 if triple else 2


@dataclass(slots=True)
class Bar:
    duration: Fraction  # in L: units
    wanted: Fraction | None  # what M: and L: ask for; None under M:none
    before: str  # the bar line that opens it
    after: str  # the bar line that closes it ("" where a full bar ends its line without one)
    line: int  # the line it closes on, from 1
    readable: bool = True  # every character of it was ABC
    line_end: bool = False  # nothing but space or comments follows its closing bar line on that line

    def copy(self) -> Bar:
        return Bar(self.duration, self.wanted, self.before, self.after, self.line, self.readable, self.line_end)


@dataclass(frozen=True, slots=True)
class Note:
    """One note, rest or chord as read (`Reader.notes`): where it starts in its bar and how long it lasts."""

    bar: int  # the index in Reader.bars of the bar it sounds in
    onset: Fraction  # from the start of that bar, in L: units
    length: Fraction  # in L: units, tuplets and broken rhythm applied
    pitches: tuple[str, ...]  # as written, without length (`^f'`); a chord's in order; () for a rest
    unit: Fraction  # the L: in effect, as a fraction of a whole note
    key: str | None  # the K: value in effect


def written_pitch(match: regex.Match) -> str:
    """A note token's pitch as written: accidental, letter, octave marks."""
    return (match.group("acc") or "") + match.group("pitch") + match.group("octave")


@dataclass(slots=True)
class Abc2midiQuirks:
    """What abc2midi refuses although ABC allows it, counted as a Reader reads, for the sampler (the checker leaves
    it to abc2midi itself): a one-character decoration (`~`, `H`, `.`) not followed by a note, rest or chord, a roll
    or trill (`~`, `T`) on a chord; a second `|:` before the first is closed, `::` right after a `:|`; a variant
    ending (`|2`) before the last is closed; a tie after anything but a note or chord (or after a staccato note), or
    before anything but bar lines, space and a note (of the same pitch) or chord; grace notes followed by anything
    but a note or chord; a tuplet opened before the last one has all its notes. Also whether abc2midi will
    accompany the tune (`may_stop_after`). The reader tells it each token, bar line and line end as it reads them.
    """

    count: int = 0  # quirks so far
    decorated: str = ""  # one-character decorations waiting for their note
    repeat: str = "start"  # "open" after `|:` or `::`, "closed" after `:|`
    ending_open: bool = False
    kind: str = ""  # of the last token
    previous: str = ""  # of the token before it
    tied: bool = False  # a tie waits for its next note
    tied_pitch: str | None = None  # which must be of this pitch (None: the tie follows a chord)
    pitch: str = ""  # of the last note
    graced: bool = False  # grace notes wait for theirs
    staccato: bool = False  # the last note is staccato (`.A`): abc2midi cannot tie it
    accompanied: bool = False  # a chord symbol was read: abc2midi accompanies the rest of the tune

    def copy(self) -> Abc2midiQuirks:
        return Abc2midiQuirks(
            self.count, self.decorated, self.repeat, self.ending_open, self.kind, self.previous, self.tied,
            self.tied_pitch, self.pitch, self.graced, self.staccato, self.accompanied,
        )

    def token(self, kind: str, match: regex.Match) -> None:
        """Any token, before the reader reads it."""
        self.previous = self.kind
        if self.decorated and kind not in ("note", "rest", "decoration"):
            self.count += kind != "chord_start" or any(roll in self.decorated for roll in ROLLS)
            self.decorated = ""
        if self.graced and kind not in ("note", "chord_start"):
            self.count += 1
        if self.tied and kind not in ("note", "chord_start", "bar", "space", "comment", "continuation"):
            self.count += 1
        elif self.tied and kind == "bar" and (":" in match.group() or any(c.isdigit() for c in match.group())):
            self.count += 1  # no tie across a repeat or into a variant ending
        if kind == "tie":
            self.count += self.kind not in ("note", "chord_end") or self.staccato
            self.tied_pitch = self.pitch if self.kind == "note" else None
        elif kind == "note":
            pitch = match.group("pitch") + match.group("octave")
            self.count += self.tied and self.tied_pitch is not None and pitch != self.tied_pitch
            self.pitch = pitch
        self.tied = kind == "tie" or self.tied and kind not in ("note", "rest", "chord_start")
        self.graced = kind == "grace"
        if kind != "comment":
            self.kind = kind
        if kind == "decoration" and not named_decoration(kind, match.group()):  # `!trill!` may stand alone
            self.decorated += match.group()
        elif kind in ("note", "rest"):
            self.staccato, self.decorated = "." in self.decorated, ""
        elif kind == "chord_end":
            self.staccato = False
        elif kind == "symbol" and match.group()[1:2] in "ABCDEFG":
            self.accompanied = True

    def line_end(self) -> None:
        if self.decorated:
            self.count += 1
            self.decorated = ""
        self.kind = "line end"

    def bar(self, bar: str, last_bar: str) -> None:
        """Follow repeats and variant endings as abc2midi does; `last_bar` is the bar line before this one."""
        if bar.startswith(":") or "||" in bar or "|]" in bar or "|:" in bar:
            self.ending_open = False
        opens = bar.rstrip("0123456789,- [").endswith(":")
        if opens and bar.startswith(":"):  # `::` closes one section and opens the next
            self.count += self.repeat == "closed"
            self.repeat = "open"
        elif opens:  # `|:`
            self.count += self.repeat == "open"
            self.repeat = "open"
        elif bar.startswith(":"):
            self.repeat = "closed"
        digits = [c for c in bar if c.isdigit()]
        if digits:
            # a second ending follows the repeat it completes: `:|2`, `:| [2`
            after_repeat = bar.startswith(":") or self.previous == "bar" and last_bar.startswith(":")
            self.count += self.ending_open or (digits[0] != "1" and not after_repeat)
            self.ending_open = True

    def tuplet(self, nested: bool) -> None:
        self.count += nested  # abc2midi: "nested tuples"

    def may_stop_after(self, bar: Bar, unit: Fraction) -> bool:
        """May the tune stop once `bar` closes (`unit`: the L: in effect)? Not where abc2midi's accompaniment would
        hold a chord on."""
        if not self.accompanied or bar.duration == bar.wanted:
            return True
        return (bar.duration * unit / ACCOMPANIMENT_STEP).denominator == 1


@dataclass
class Reader:
    """Reading state of one tune. Feed text with `feed`, end with `finish`; `copy()` forks it cheaply."""

    meter: Fraction | None = Fraction(1)
    triple: bool = False  # M:'s numerator is a multiple of 3 (tuplets (5 (7 (9 default to the time of three)
    unit: Fraction | None = None
    key: str | None = None
    key_line: bool = False  # a K: line was read (well-formed or not)
    in_body: bool = False
    multi_voice: bool = False
    bars: list[Bar] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    line: int = 1
    # the bar being read
    current: Fraction = Fraction(0)
    has_notes: bool = False
    readable: bool = True
    before: str = ""
    # what the next notes are subject to
    tuplet_left: int = 0
    tuplet_ratio: Fraction = Fraction(1)
    last_note: Fraction | None = None
    pending_broken: Fraction = Fraction(1)
    chord: list[tuple[Fraction, str]] | None = None  # the open chord's notes: (length, pitch as written)
    slurs: int = 0  # slurs opened and not yet closed
    slur_empty: bool = False  # no note, rest, chord or grace group since the last slur opened
    empty_slurs: int = 0  # slurs closed over no note (`( )`): tune books write none; a sampler may, as filler
    # the text of the token being read, and of the field line being read
    pending: str = ""
    line_start: bool = True
    field_line: str | None = None
    content_since_bar: bool = False
    finished: bool = False
    last_bar: str = ""  # the last bar line
    bar_on_line: bool = False  # a bar line was read on this line
    # Bar lines closing a bar with nothing in it on their line (`| |`, `|| ||`, `:| ||`): blank staves of tune
    # books, and for a sampler a way to write bars without music. Not counted: a bar line opening a repeat
    # (`:| |:`), a variant ending after a plain bar line or a repeat (`| [1`, `:| [2`), and the first on its line
    # (`|\n| G2`).
    empty_bars: int = 0
    # Chord symbols and annotations written since the last note, rest or chord, and the most of them in any such run:
    # tune books write one or two over a note, never a heap of quoted text in place of music.
    symbols_in_a_row: int = 0
    most_symbols: int = 0
    # The first quoted string that holds music rather than a chord symbol or text (hides_music), as written.
    hidden_music: str = ""
    # Named decorations (`!f!`) the same way: tune books put one on a note, never a run of them over nothing.
    decorations_in_a_row: int = 0
    most_decorations: int = 0
    abc2midi: Abc2midiQuirks = field(default_factory=Abc2midiQuirks)
    # A list to record every note, rest and chord in (the musical measures read them); None, as the sampler reads,
    # records none.
    notes: list[Note] | None = None
    # Told every piece of the text in order, to rewrite it (the transposer): ("token", match) for a token,
    # ("field", text) for a field line, ("text", text) for a newline or a character that is no ABC.
    listener: Callable[..., None] | None = None

    def copy(self) -> Reader:
        """An independent reader in the same state (bars and problems are copied lists of immutable facts)."""
        twin = object.__new__(Reader)  # copy.copy, without its generic (and for the sampler, slow) protocol
        twin.__dict__.update(self.__dict__)
        twin.bars, twin.problems = list(self.bars), list(self.problems)
        if self.bars:  # the last bar may still learn that it ends its line
            twin.bars[-1] = self.bars[-1].copy()
        if self.chord is not None:
            twin.chord = list(self.chord)
        if self.notes is not None:
            twin.notes = list(self.notes)
        twin.abc2midi = self.abc2midi.copy()
        return twin

    # ------------------------------------------------------------------ what the music asks for
    def wanted(self) -> Fraction | None:
        """The bar length in L: units that M: asks for now; None for free meter."""
        return bar_units(self.meter, self.unit)

    def problem(self, message: str, in_bar: bool = True) -> None:
        """Record text that is not ABC; the bar it stands in cannot be said to keep the meter."""
        self.problems.append(f"line {self.line}: {message}")
        if in_bar:
            self.readable = False

    # ------------------------------------------------------------------ characters in
    def feed(self, text: str) -> Reader:
        for ch in text:
            self._char(ch)
        return self

    def _char(self, ch: str) -> None:
        if self.field_line is not None:
            if ch == "\n":
                self._field_line(self.field_line)
                self._end_line()
                self._hear("text", ch)
            else:
                self.field_line += ch
            return
        if ch == "\n":
            self._end_line()
            self._hear("text", ch)
            return
        if self.line_start:
            if not self.pending and ch.isascii() and ch.isalpha():
                self.pending = ch  # a field line (`M:6/8`) or a note (`A`): the next character tells
                return
            if len(self.pending) == 1 and ch == ":":
                self.field_line, self.pending, self.line_start = self.pending + ":", "", False
                return
            self.line_start = False
        self._lex(ch)

    def _lex(self, queue: str) -> None:
        """Longest-match lexing: keep extending the pending token while some token could still begin so."""
        while queue:
            candidate = self.pending + queue[0]
            if len(candidate) <= MAX_TOKEN and token_may_begin(candidate):
                self.pending, queue = candidate, queue[1:]
            elif not self.pending:  # no token starts with this character
                self._unexpected(queue[0])
                queue = queue[1:]
            else:
                queue = self._emit_longest() + queue

    def _emit_longest(self) -> str:
        """Emit the longest complete token at the start of `pending`; return what is left of it."""
        text = self.pending
        self.pending = ""
        for end in range(len(text), 0, -1):
            token = whole_token(text[:end])
            if token:
                self._token(*token)
                return text[end:]
        if text:
            self._unexpected(text[0])
            return text[1:]
        return ""

    def flush(self) -> None:
        """Emit the token being read, as if the text ended here (the sampler asks what a note would last now)."""
        while self.pending:
            rest = self._emit_longest()
            if rest:
                self._lex(rest)

    def _hear(self, kind: str, piece) -> None:
        if self.listener is not None:
            self.listener(kind, piece)

    def _unexpected(self, ch: str) -> None:
        self._hear("text", ch)
        self._music()
        self.problem(f"unexpected {ch!r}")

    def _end_line(self) -> None:
        if self.line_start and self.pending:  # a lone letter on its line
            self.line_start = False
        self.flush()
        self.abc2midi.line_end()
        if self.field_line is None:
            if self.chord is not None:
                self.problem("chord '[' not closed on its line")
                self.chord = None
            wanted = self.wanted()
            if self.has_notes and self.current == wanted:
                # A full bar at the end of a line needs no bar line: the Essen collection writes phrases that way.
                self._close_bar("")
                self.content_since_bar = False
            if self.bars and not self.content_since_bar:
                self.bars[-1].line_end = True
        self.field_line, self.line_start, self.content_since_bar, self.bar_on_line = None, True, False, False
        self.line += 1

    # ------------------------------------------------------------------ fields
    def _field_line(self, text: str) -> None:
        self._hear("field", text)
        letter, value = text[0], text[2:].strip()
        if not self.in_body or letter in "MLKV":
            self._field(letter, value)
        if letter == "K":
            self.in_body = self.key_line = True

    def _field(self, letter: str, value: str) -> None:
        if letter == "M":
            meter = parse_meter(value)
            if meter == "bad":
                self.problem(f"M:{value} is not a meter (e.g. M:6/8, M:C)", in_bar=False)
            else:
                self.meter, self.triple = meter, is_triple(value)
        elif letter == "L":
            match = UNIT.match(value)
            if match:
                self.unit = Fraction(1, int(match.group(1)))
            else:
                self.problem(f"L:{value} is not a note length (e.g. L:1/8)", in_bar=False)
        elif letter == "K":
            if KEY.match(value):
                self.key = value
            else:
                self.problem(f"K:{value} is not a key (e.g. K:D, K:Ador)", in_bar=False)
        elif letter == "V":
            self.multi_voice = True

    # ------------------------------------------------------------------ tokens
    def _music(self) -> None:
        if not self.in_body:
            self.problem("music before the K: field")
            self.in_body = True

    def _token(self, match: regex.Match, kind: str) -> None:
        self._hear("token", match)
        self.abc2midi.token(kind, match)
        if kind in ("space", "comment", "continuation"):
            return
        if kind == "bar" and self.bar_on_line and not self.content_since_bar and not self.has_notes:
            bar, last = match.group(), self.last_bar.rstrip()
            ending = any(c.isdigit() for c in bar) and (last == "|" or last.startswith(":") and not last.endswith(":"))
            self.empty_bars += not (bar.rstrip().endswith(":") or ending)
        self._music()
        self.content_since_bar = True
        if kind == "symbol":
            self.symbols_in_a_row += 1
            self.most_symbols = max(self.most_symbols, self.symbols_in_a_row)
            if not self.hidden_music and hides_music(match.group()[1:-1]):
                self.hidden_music = match.group()
        elif named_decoration(kind, match.group()):
            self.decorations_in_a_row += 1
            self.most_decorations = max(self.most_decorations, self.decorations_in_a_row)
        elif kind in ("note", "rest", "chord_start"):
            self.symbols_in_a_row = self.decorations_in_a_row = 0
        if kind in ("note", "rest", "chord_start", "grace"):
            self.slur_empty = False
        if kind == "field":
            letter, value = match.group()[1], match.group()[3:-1]
            if letter in "ML":
                self._field(letter, value)
        elif kind == "bar":
            self.abc2midi.bar(match.group(), self.last_bar)
            self.last_bar = match.group()
            if self.chord is not None:
                self.problem("bar line inside a chord")
                self.chord = None
            self._close_bar(match.group())
            self.content_since_bar, self.bar_on_line = False, True
        elif kind in ("note", "rest"):
            text = match.group("len") if kind == "note" else match.group("rlen")
            length = parse_length(text)
            if length is None:
                self.problem(f"{match.group()!r} has no valid length (a length is n, n/m or /, not zero)")
                length = Fraction(1)
            pitch = written_pitch(match) if kind == "note" and self.notes is not None else ""
            if self.chord is not None:
                self.chord.append((length, pitch))
            else:
                self._add(length, (pitch,) if pitch else ())
        elif kind == "measures":
            if len(match.group("count")) > MAX_DIGITS:
                self.problem(f"{match.group()!r}: too many bars of rest")
            # Z4 is four whole bars of rest: they end the bar before them and are not measured.
            self._close_bar("|")
        elif kind == "chord_start":
            if self.chord is not None:
                self.problem("'[' inside a chord")
            self.chord = []
        elif kind == "chord_end":
            self._chord_end(match.group("clen"))
        elif kind == "tuplet":
            self._tuplet(match)
        elif kind == "broken":
            self._broken(match.group())
        elif kind == "slur" and match.group() == "(":
            self.slurs, self.slur_empty = self.slurs + 1, True
        elif kind == "slur":
            self.empty_slurs += self.slurs > 0 and self.slur_empty
            self.slurs = max(self.slurs - 1, 0)
        elif kind == "overlay":
            self.multi_voice = True

    def _chord_end(self, length_text: str) -> None:
        if self.chord is None:
            self.problem("']' closes no chord")
            return
        notes, self.chord = self.chord, None
        if not notes:
            self.problem("empty chord")
            return
        length = parse_length(length_text)
        if length is None:
            self.problem(f"chord length {length_text!r} is not a length")
            length = Fraction(1)
        self._add(notes[0][0] * length, tuple(pitch for _, pitch in notes if pitch))

    def _tuplet(self, match: regex.Match) -> None:
        p, q_text, r_text = int(match.group("p")), match.group("q") or "", match.group("r") or ""
        if any(len(text) > MAX_DIGITS or (text and int(text) == 0) for text in (q_text, r_text)):
            self.problem(f"tuplet {match.group()!r} is not a tuplet (e.g. (3 or (3:2:3)")
            return
        q = int(q_text) if q_text else tuplet_default_q(p, self.triple)
        self.abc2midi.tuplet(nested=self.tuplet_left > 0)
        self.tuplet_left, self.tuplet_ratio = int(r_text) if r_text else p, Fraction(q, p)

    def _broken(self, arrows: str) -> None:
        if self.last_note is None or not self.has_notes:
            self.problem(f"broken rhythm {arrows!r} with no note before it")
            return
        if len(set(arrows)) > 1:
            self.problem(f"mixed broken rhythm {arrows!r}")
            return
        if self.pending_broken != 1:  # `F>>>>>D`: abc2midi says "Too many >'s"
            self.problem(f"broken rhythm {arrows!r} right after another")
            return
        shorter = Fraction(1, 2 ** len(arrows))
        first, second = (2 - shorter, shorter) if arrows[0] == ">" else (shorter, 2 - shorter)
        self.current += self.last_note * (first - 1)
        self.pending_broken = second
        if self.notes:
            self.notes[-1] = replace(self.notes[-1], length=self.notes[-1].length * first)

    def _add(self, length: Fraction, pitches: tuple[str, ...] = ()) -> None:
        """Account one note, rest or chord of `length` units (tuplets and broken rhythm applied here)."""
        if self.tuplet_left:
            length *= self.tuplet_ratio
            self.tuplet_left -= 1
        if self.pending_broken != 1:
            length *= self.pending_broken
            self.pending_broken = Fraction(1)
        if self.notes is not None:
            self.notes.append(Note(len(self.bars), self.current, length, pitches, unit_length(self.meter, self.unit), self.key))
        self.current += length
        self.last_note, self.has_notes = length, True

    def _close_bar(self, mark: str) -> None:
        if self.has_notes:
            self.bars.append(Bar(self.current, self.wanted(), self.before, mark, self.line, self.readable))
        self.current, self.has_notes, self.before, self.readable = Fraction(0), False, mark, True

    # ------------------------------------------------------------------ the end
    def finish(self) -> Reader:
        """End the tune: flush the last line and close the last bar. Reading more afterwards is not allowed."""
        if not self.finished:
            if self.pending or self.field_line is not None or self.content_since_bar or self.has_notes:
                self._end_line()
            if self.chord is not None:
                self.problem("chord '[' never closed")
            self._close_bar("|]")
            if self.bars:
                self.bars[-1].line_end = True
            self.finished = True
        return self


def read(text: str) -> Reader:
    """A whole tune, read."""
    return Reader().feed(text).finish()


def section_openings(bars: list[Bar]) -> list[int]:
    """For each bar, the index of the first bar of its section (after the last `|:`, `::`, `||` or tune start)."""
    openings, opening = [], 0
    for i, bar in enumerate(bars):
        if i and SECTION_START.search(bar.before):
            opening = i
        openings.append(opening)
    return openings


def bar_fits(bars: list[Bar], i: int, openings: list[int] | None = None) -> bool | None:
    """Does bar i keep the meter? None when there is none to keep (M:none).

    A bar fits when all of it could be read and it lasts what M: and L: ask. A short bar fits only where ABC
    practice writes one on purpose: the opening pickup, the last bar, a bar that with its neighbour across a
    repeat, section mark or line end makes one whole bar (a bar split around `:|` or a line break), and a
    bar closing a section that with the section's opening pickup makes one whole bar.
    """
    bar = bars[i]
    if bar.wanted is None:
        return None
    if not bar.readable or bar.duration > bar.wanted:
        return False
    if bar.duration == bar.wanted or i == 0 or i == len(bars) - 1:
        return True
    previous, following = bars[i - 1], bars[i + 1]
    if (previous.line_end or SECTION_BAR.search(bar.before)) and bar.duration + previous.duration == bar.wanted:
        return True
    if (bar.line_end or SECTION_BAR.search(bar.after)) and bar.duration + following.duration == bar.wanted:
        return True
    if SECTION_BAR.search(bar.after):
        opening = (openings or section_openings(bars))[i]
        if opening < i and bars[opening].duration + bar.duration == bar.wanted:
            return True
    return False
