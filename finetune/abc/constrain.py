"""Sampling that keeps the meter: a `transformers.LogitsProcessor` that masks every token that would break the tune.

    processor = MeterLogitsProcessor(tokenizer, max_new_tokens=512)
    model.generate(input_ids, do_sample=True, top_k=8, logits_processor=LogitsProcessorList([processor]), ...)

At each step, for each row, it tries the likeliest tokens in order on a copy of that row's `Reader` (the one
reader of ABC text, fed token by token, never re-reading the tune) and keeps the first `keep` that are allowed;
every other token gets -inf, so top-k and top-p sampling, which generate applies after it, choose among allowed
tokens only. A token is refused when its text would:

- break ABC syntax as the checker reads it (any new problem the reader records);
- make the current bar longer than M: and L: allow (tuplets, broken rhythm and chords counted). A note whose
  length is still being written is judged by the shortest it could still become, so `c` may be followed by `/`;
- close a bar short, except where ABC practice writes one: the opening pickup; a bar closing a section
  (`:|`, `||`, `|]`, an ending) that with the section's pickup makes one bar, or else is completed exactly by
  the bar after it; a section's pickup that completes the bar before its section bar; the last bar of the tune;
- change M:, L: or K: (an inline field), start a field line or a second voice, or write what the checker
  forgives in real tune books but a model has no need of: comments, non-ASCII text, free text in quotes
  (chord symbols `"Am7"` and annotations `"^fine"` are kept), unnamed decorations, grace groups of non-notes;
- end the tune (the end-of-sequence token) with a bar, chord, slur, tuplet, tie, variant ending or field left
  open;
- write what abc2midi does not read although ABC allows it (`Reader.quirks`: a decoration, grace notes or a tie
  not followed by their note, a second `|:` or variant ending out of place, ...), a decoration abc2midi does not
  play, an octave mark against the letter's case (`e,`), an empty line (it ends a tune), a run of more than
  MAX_SPACES spaces or backquotes, or a bar with nothing in it (`| |`, `Reader.empty_bars`).

In the last ENDING_MARGIN tokens of the budget it steers to an ending instead of being cut off: the end-of-sequence
token as soon as it is allowed, else a slur closed, a half-written token finished, the open bar closed (it may be
short, as the last bar), with plain notes, rests and bar lines only. It works for any tokenizer: each token's text is decoded once; tokens
that are not text on their own (byte pieces, special tokens) are refused. If no token among the vocabulary keeps
the meter, the row keeps only the syntax for that step (its bar will be off), counted in `self.unconstrained_steps`.
A token that a processor before it has masked (-inf; sample.py puts the loop limit there) is refused too.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import regex
import torch
from transformers import LogitsProcessor, PreTrainedTokenizerBase

from .reader import SECTION_BAR, SECTION_START, Reader, token_may_begin, whole_token

# An inline field (a chord opens with a note instead): it could change what the prompt set, or start a voice.
FIXED_INLINE_FIELD = regex.compile(r"^\[(?![A-Ga-g])[A-Za-z]")
# What a tune body may hold once the model writes it: stricter than the checker, which must accept real tune books.
# Printable ASCII only (titles may carry any text, music does not); no comments, no field lines; chord symbols
# (`"Am7/G"`) and annotations (`"^fine"`: up to 12 characters and no bar lines or brackets, as all but 3 of the
# training tunes' 713 write them, so that no music hides in one) rather than free text in quotes; named decorations;
# notes in grace groups.
BODY_TEXT = regex.compile(r"^[ -$&-\[\]-~\n]*$")
WRITTEN_TOKEN = regex.compile(
    r"""
    "(?:[A-G][#b]?(?:m|min|maj|dim|aug|sus)?[0-9]{0,2}(?:(?:add|sus|b|\#)[0-9]{1,2})?(?:/[A-G][#b]?)?|[\^_<>@][ !\#-Z^-z~]{1,12})"
  | !(?:mordent|turn|arpeggio|accent|fermata|wedge|breath|p{1,3}|mp|mf|f{1,3}|sfz|crescendo[()]|diminuendo[()]
        |[<>][()])!
  | \{/?(?:[\^_=]?(?:[A-G],{0,2}|[a-g]'{0,2})[1-4]?(?:/[248]?|//)?){1,8}\}
    """,
    regex.VERBOSE,
)
# Bar lines as tunes write them (`| 1`, `[|]`, `:::|` are ABC too, but no tune needs them), and note lengths:
# up to 16 units, halved up to three times.
WRITTEN_BAR = regex.compile(r"\||\|\||\|\]|\|:|:\||::|\[\||\|\[?[12]|:\|\[?[12]|:\|\]|\[[12]")
BAR_START = regex.compile(r"^(?::|\||\[\||\[\d)")
WRITTEN_NOTE = regex.compile(r"(?:(?:\^\^|\^|__|_|=)?(?:[A-G],{0,3}|[a-g]'{0,3})|[zx])(?:[1-9]|1[0-6])?(?:/[248]?|//|///)?")
WRITTEN_CHORD_END = regex.compile(r"\](?:[1-9]|1[0-6])?(?:/[248]?|//|///)?")
WRITTEN_MEASURES = regex.compile(r"[ZX](?:[1-9][0-9]?)?")
WRITTEN_TUPLET = regex.compile(r"\([234]")  # duplets, triplets, quadruplets: what folk tunes use
# What may start after a one-character decoration, after grace notes and after a tie (abc2midi wants their
# note next: Reader.quirks), and the one decoration a note may carry.
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
# Slurs open at once (real tunes nest two at most), and tokens left before the budget at which the processor
# steers to an ending.
MAX_SLURS = 2
ENDING_MARGIN = 32
# Near the budget nothing new opens (no slur, chord, tuplet, quote, grace or decoration): notes, rests, bar lines.
PLAIN_TEXT = regex.compile(r"^[A-Ga-gzx0-9/,'^_= |:\]\)\n]+$")
MUSIC = regex.compile(r"[A-Ga-gzx]")
SOUNDING = frozenset("^_=ABCDEFGabcdefgzx")  # what a note or rest may start with
OCTAVE_MARKS = ("'", "''", ",", ",,")
EMPTY_LINE = regex.compile(r"\n[ \t]*\n")
# Tunes align bars with runs of spaces: 2 to 4 are three in four of the training tunes' runs.
MAX_SPACES = 4
LONG_LAYOUT_RUN = regex.compile(rf"[ `]{{{MAX_SPACES + 1}}}")  # backquotes too: ABC's beam spacing, no music


@dataclass
class RowState:
    """A row's reader, with what the meter policy remembers about its bars."""

    reader: Reader
    owed: Fraction | None = None  # what the next bar must last to complete a bar split around a repeat
    opening: int = 0  # index of the first bar of the current section
    done: bool = False
    spacing: str = "\n"  # the text since the last line break (or its last character): see _spaced


def _promised(reader: Reader) -> Fraction:
    """The least that notes the text has already committed to will last: the note an accidental or a broken rhythm
    calls for (after `c<`, d counts 3/2: at its shortest on the grid of eighths of a unit, 3/8) and the rest of a
    tuplet."""
    promised = Fraction(0)
    if reader.pending_broken != 1 or reader.pending[:1] in ("^", "_", "=", "{") or reader.decorated or reader.graced:
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
        and not reader.decorated and not reader.tied and not reader.graced
    )


def _whole(pending: str) -> regex.Match | None:
    """The token being written, if it is one whole token already."""
    token = whole_token(pending) if pending else None
    return token[0] if token else None


def _only(order: list[int], weights: list[float] | None, keep) -> tuple[list[int], list[float] | None]:
    """The tokens of `order` that `keep` accepts, with their weights (which follow `order` rank for rank)."""
    kept = [rank for rank, token_id in enumerate(order) if keep(token_id)]
    return [order[rank] for rank in kept], [weights[rank] for rank in kept] if weights else None


@functools.lru_cache(maxsize=1 << 16)
def _written_as_tunes_write(pending: str) -> bool:
    """Could the token being read still become one that real tunes write (see WRITTEN_*)?"""
    if not pending:
        return True
    first = pending[0]
    if first in '"!+{':
        return bool(WRITTEN_TOKEN.fullmatch(pending, partial=True))
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
    return True


@functools.lru_cache(maxsize=4)
def token_texts(tokenizer: PreTrainedTokenizerBase) -> tuple[str | None, ...]:
    """Each token id's text, decoded once per tokenizer (a processor is made per batch); None for special tokens
    and for pieces that are no text on their own (byte pieces of a character)."""
    special = set(tokenizer.all_special_ids)
    texts = (None if token_id in special else tokenizer.decode([token_id]) for token_id in range(len(tokenizer)))
    return tuple(text if text and "\ufffd" not in text else None for text in texts)


class MeterLogitsProcessor(LogitsProcessor):
    """Masks the tokens that would break ABC syntax or the meter M: and L: give (see the module docstring)."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, max_new_tokens: int | list[int], keep: int = 16,
        temperature: float = 1.0, top_p: float = 1.0,
    ):
        """`max_new_tokens`: generate's, or one budget per row (a padded batch whose rows stop apart)."""
        self.eos = tokenizer.eos_token_id
        self.keep, self.max_new_tokens = keep, max_new_tokens
        # The sampling that follows, to stop looking once top-p's choice cannot change (see _nucleus_settled).
        self.temperature, self.top_p = temperature, top_p
        self.texts = token_texts(tokenizer)
        self.close_slur = self.texts.index(")") if ")" in self.texts else None
        self.tokenizer = tokenizer
        self.rows: list[RowState] | None = None
        self.budgets: list[int] = []  # each row's max_new_tokens, set with the rows
        self.prompt_length = 0
        self.unconstrained_steps = 0

    # ------------------------------------------------------------------ per step
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.rows is None:
            self.prompt_length = input_ids.shape[1]
            self.rows = [RowState(Reader()) for _ in range(input_ids.shape[0])]
            per_row = isinstance(self.max_new_tokens, list)
            self.budgets = self.max_new_tokens if per_row else [self.max_new_tokens] * len(self.rows)
            for state, row in zip(self.rows, input_ids.tolist()):
                self._feed(state, self.tokenizer.decode(row, skip_special_tokens=True))
        else:
            for state, token_id in zip(self.rows, input_ids[:, -1].tolist()):
                self._advance(state, token_id)
        written = input_ids.shape[1] - self.prompt_length
        mask = torch.full_like(scores, float("-inf"))
        ranked = scores.argsort(dim=-1, descending=True)
        # tokens an earlier processor masked (the loop limit) rank last: they stay refused, and are never tried
        unmasked = (~scores.isneginf()).sum(-1).tolist()
        order = [ids[:n] for ids, n in zip(ranked.tolist(), unmasked)]
        weights = (scores / self.temperature).softmax(-1).gather(-1, ranked).tolist() if self.top_p < 1 else None
        for row, state in enumerate(self.rows):
            if state.done or written >= self.budgets[row]:  # ended, or stopped at its own budget (its tokens are pads)
                mask[row] = 0
                continue
            row_weights = weights[row][: unmasked[row]] if weights else None
            ending = self.budgets[row] - written <= ENDING_MARGIN
            allowed = self._allowed(state, order[row], row_weights, ending=ending)
            if not allowed and ending:  # no way to the end from here: keep the meter at least
                allowed = self._allowed(state, order[row], row_weights, ending=False)
            if not allowed:  # the meter cannot be kept from here: keep the syntax, and let this bar be off
                self.unconstrained_steps += 1
                # the `keep` likeliest, as top-k would choose them
                syntax_ok = (t for t in order[row] if self.texts[t] and self._try(state, self.texts[t], meter=False))
                allowed = list(itertools.islice(syntax_ok, self.keep))
            mask[row, allowed or [self.eos]] = 0
        return scores + mask

    def _advance(self, state: RowState, token_id: int) -> None:
        """Feed the token a row has just sampled, and update what the bar policy remembers."""
        if state.done or token_id == self.eos:
            state.done = True
            return
        self._feed(state, self.texts[token_id] or "")

    def _feed(self, state: RowState, text: str) -> None:
        state.spacing = _line_tail(state.spacing + text)
        closed = len(state.reader.bars)
        _read(state.reader, text)
        verdict = self._close_bars(state, state.reader, since=closed)
        state.owed, state.opening = verdict if verdict is not None else (None, len(state.reader.bars))

    def _allowed(self, state: RowState, order: list[int], weights: list[float] | None, ending: bool) -> list[int]:
        allowed, found = [], []
        if ending:  # near the budget: end now, else close slurs, finish the token being written, close the bar
            if self._may_end(state):
                return [self.eos]
            writing = state.reader.pending and _whole(state.reader.pending) is None
            if state.reader.slurs and not writing and self.close_slur is not None and self._try(state, ")") is not None:
                return [self.close_slur]
            if writing:  # a token half-written (`"Am`, `!tri`): complete it if one token can, else go on writing it
                settling = [t for t in order if self.texts[t] and self._settles(state, self.texts[t])]
                if settling:
                    return settling[: self.keep]
            else:
                order, weights = _only(order, weights, lambda t: self.texts[t] is None or PLAIN_TEXT.match(self.texts[t]))
                closing = [t for t in order if self.texts[t] and self._closes_bar(state, self.texts[t])
                           and self._try(state, self.texts[t], meter=False) is not None]  # syntax and policy too
                if closing:
                    return closing[: self.keep]
                if not state.reader.has_notes:  # the last bar may not end the tune: only more music will
                    order, weights = _only(order, weights, lambda t: self.texts[t] and MUSIC.search(self.texts[t]))
        untried = sum(weights) if weights else 0.0
        refused = self._surely_refused(state)
        for rank, token_id in enumerate(order):
            text = self.texts[token_id]
            if token_id == self.eos:
                ok = self._may_end(state)
            elif refused and text and refused(text):
                ok = False
            else:
                verdict = self._try(state, text) if text is not None else None
                # near the budget, no bar is split around a repeat: its other half would be owed before the end
                ok = verdict is not None and not (ending and verdict[0] not in (None, state.owed))
            if ok:
                allowed.append(token_id)
            if len(allowed) == self.keep:
                break
            if weights:
                untried -= weights[rank]
                if ok:
                    found.append((found[-1] if found else 0.0) + weights[rank])
                if found and self._nucleus_settled(found, untried):
                    break
        return allowed

    def _surely_refused(self, state: RowState) -> Callable[[str], bool] | None:
        """A test that tells, without trying it, that a text is refused here; None where there is none.

        - The token being written is whole and already refused as it stands: a bar line that would close its bar
          as ABC practice does not (`|` after a short bar inside a section), or a note that overfills the bar
          unless it is shortened (`G3` with 4 of 6 units written). A text that cannot extend it emits it first,
          and a closed bar stays closed, problems only accumulate and a bar's length only grows (but for `<`,
          which halves the note before): every such text is refused.
        - The bar is full (once the token being written is emitted): a text that cannot extend that token and
          starts with a note or rest would overfill it, however short the note is written.

        Exact: a test compares with trying every token. Most of the tries it saves are where few tokens are
        allowed and the model's likeliest are not, so that the search would otherwise go deep."""
        reader, pending = state.reader, state.reader.pending
        if reader.line_start or pending and _whole(pending) is None:
            return None
        done = reader
        if pending:
            done = reader.copy()
            done.flush()
        limit = state.owed if state.owed is not None else done.wanted()
        bar_open = limit is not None and len(done.bars) == len(reader.bars) and done.chord is None

        def apart(text: str) -> bool:  # the text does not extend the pending token, so that is emitted as it stands
            return not pending or not token_may_begin(pending + text[0])

        if pending and (
            len(done.problems) > len(reader.problems)
            or done.empty_bars > reader.empty_bars
            or self._close_bars(state, done) is None
            or bar_open and done.current > limit
        ):
            return lambda text: apart(text) and "<" not in text
        if bar_open and done.current >= limit:
            return lambda text: text[0] in SOUNDING and apart(text)
        return None

    def _nucleus_settled(self, found: list[float], untried: float) -> bool:
        """Would top-p keep the same tokens whatever the untried ones turn out to be?

        `found` holds the running mass of the allowed tokens so far, likeliest first. Top-p keeps the shortest
        prefix whose mass reaches top_p of all the allowed mass top-k passes on, which lies between found[-1]
        (no untried token allowed) and found[-1] + untried (all of them). Where both bounds give the same
        prefix, looking further cannot change what is sampled, so the search stops there: exact, not a
        shortcut (the margin covers float rounding).
        """
        bound = self.top_p * (found[-1] + untried) * (1 + 1e-6)
        cut = next((i for i, mass in enumerate(found) if mass >= bound), None)
        return cut is not None and (cut == 0 or found[cut - 1] < self.top_p * found[-1] * (1 - 1e-6))

    # ------------------------------------------------------------------ the policy
    def _try(self, state: RowState, text: str, meter: bool = True):
        """(owed, opening) after `text` if it is allowed, else None; with `meter` False, judge the syntax only."""
        before = state.reader
        if before.in_body and (not BODY_TEXT.match(text) or not _spaced(state.spacing + text)):
            return None
        reader, read = before.copy(), []
        if before.in_body:  # every token the text completes, not only the one it leaves open, as tunes write them
            reader.listener = lambda kind, piece: kind == "token" and read.append(piece.group())
        _read(reader, text)
        reader.listener = None
        if (
            not all(_written_as_tunes_write(token) for token in read)
            or len(reader.problems) > len(before.problems) or reader.multi_voice or reader.slurs > MAX_SLURS
            or reader.quirks > before.quirks
        ):
            return None
        if before.in_body and (
            reader.field_line is not None
            or FIXED_INLINE_FIELD.match(reader.pending)
            # a letter that opens a line is held until the next character says field or note: it must be a note
            or (reader.line_start and reader.pending and not token_may_begin(reader.pending))
            or not _written_as_tunes_write(reader.pending)
            # after a decoration, only what may carry it: a note, a rest, a chord (one decoration to a note)
            or reader.decorated and reader.pending and not DECORATED.match(reader.pending)
            or reader.graced and reader.pending and not GRACED.match(reader.pending)
            or reader.tied and reader.pending and not TIED.match(reader.pending)
        ):
            return None
        complete = _whole(reader.pending)
        if reader.pending and complete is None and BAR_START.match(reader.pending):
            # half a bar line (`:` of `:|`): allowed if a character more makes an allowed one
            return next((v for c in "|:]" if (v := self._try(state, text + c)) is not None), None) if len(text) < 8 else None
        if reader.pending and complete is None:
            done = reader  # a token still being written (`"Am`, `!tr`): it lasts nothing, and is judged once whole
        else:
            done = reader.copy()
            done.flush()
            if len(done.problems) > len(before.problems):
                return None
        if (
            done.quirks > before.quirks and not self._octave_may_mend(before, reader)
            or done.decorated and not ONE_DECORATION.fullmatch(done.decorated)  # one to a note, as tunes write
        ):
            return None
        if done.multi_voice or done.slurs > MAX_SLURS or before.in_body and (done.meter, done.unit, done.key) != (before.meter, before.unit, before.key):
            return None
        if not meter:
            return state.owed, state.opening
        if len(done.bars) > len(before.bars) and done.tuplet_left:
            return None  # a bar line inside a tuplet
        verdict = self._close_bars(state, done)
        if verdict is None:
            if complete is not None and complete.group("bar") is not None:
                return self._bar_may_grow(state, reader)  # `|` may yet become `||`, `|]` or `|:`
            return None
        owed, _ = verdict
        if owed is not None and not SECTION_BAR.search(done.before):
            return None  # the rest of a bar split around a repeat follows the repeat at once (`|:|` would part them)
        if done.empty_bars > before.empty_bars:  # a bar without music; `|` may yet open a repeat or an ending
            if complete is None or complete.group("bar") is None or len(text) >= 8:
                return None
            return next((v for c in ":12[" if (v := self._try(state, text + c)) is not None), None)
        wanted = done.wanted()
        if wanted is not None and not self._room(before, reader, done, owed if owed is not None else wanted):
            return None
        return verdict

    @staticmethod
    def _octave_may_mend(before: Reader, reader: Reader) -> bool:
        """Is the note being written tied to, and may it yet take the octave marks of, the note before (`g` of
        `g'-g'`)? Judged as it stands it is of another pitch."""
        complete = _whole(reader.pending)
        if not reader.tied or complete is None or complete.group("note") is None:
            return False
        for marks in OCTAVE_MARKS:
            grown = reader.copy().feed(marks)
            grown.flush()
            if grown.quirks == before.quirks and len(grown.problems) == len(before.problems):
                return True
        return False

    @staticmethod
    def _room(before: Reader, reader: Reader, done: Reader, limit) -> bool:
        """Can the open bar still keep within `limit`: as it stands, or once the note or chord being written is
        shortened (`c` -> `c/`, `[ce]` -> `[ce]/`) as far as tunes shorten notes (three halvings), or given the
        length it has not written yet (`c` -> `c3`)?"""
        if done.chord is None and _reachable(done, limit):
            return True
        complete = _whole(reader.pending)
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

    def _close_bars(self, state: RowState, done: Reader, since: int | None = None):
        """(owed, opening) after the bars `done` closed since the row's reader (or bar `since`); None if one may not."""
        owed, opening = state.owed, state.opening
        for index in range(len(state.reader.bars) if since is None else since, len(done.bars)):
            verdict = self._bar_closes(done.bars, index, owed, opening)
            if verdict is None:
                return None
            owed, opening = verdict
        return owed, opening

    def _bar_may_grow(self, state: RowState, reader: Reader):
        """A bar line refused as it stands (`|`) is kept if one more character makes it an allowed one (`|]`)."""
        for extra in ("]", ":", "|"):
            done = reader.copy().feed(extra)
            done.flush()
            if len(done.problems) == len(state.reader.problems) and self._close_bars(state, done) is not None:
                return state.owed, state.opening
        return None

    @staticmethod
    def _bar_closes(bars, index: int, owed, opening: int):
        """(owed, opening) once bar `index` has closed, if ABC practice allows it to close as it is; else None."""
        bar = bars[index]
        if index and SECTION_START.search(bar.before):  # as the checker's section_openings reads it (`:| |:`
            opening = index  # leaves an empty bar between the bar closed at `:|` and this one)
        next_opening = index + 1 if SECTION_START.search(bar.after) else opening
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

    def _closes_bar(self, state: RowState, text: str) -> bool:
        """Near the budget: does `text` close the open bar (as the tune's last bar, which may be short)?"""
        before = state.reader
        done = before.copy().feed(text)
        done.flush()
        if len(done.problems) > len(before.problems) or done.chord is not None or done.quirks > before.quirks:
            return False
        if len(done.bars) <= len(before.bars):  # no music since the last bar line: it may close a variant ending
            return before.ending_open and not done.ending_open and not done.has_notes
        # and nothing open waits for more music, which would make this short bar one inside the tune
        return not done.has_notes and _nothing_open(done) and self._may_close_last(state, done)

    @staticmethod
    def _may_close_last(state: RowState, done: Reader) -> bool:
        """The tune's last bar may be short (it balances the pickup, or simply ends the tune), never long; after a
        bar split around a repeat it must be that bar's other half; and it may not cut an accompaniment's beat."""
        bar = done.bars[-1]
        if not done.may_stop_after(bar):
            return False
        if bar.wanted is None:
            return True
        return bar.duration == state.owed if state.owed is not None else bar.duration <= bar.wanted

    def _settles(self, state: RowState, text: str) -> bool:
        """Near the budget: is `text` allowed and does it leave no token, chord or group half-written?"""
        if self._try(state, text) is None:
            return False
        reader = _read(state.reader.copy(), text)
        return (not reader.pending or _whole(reader.pending) is not None) and reader.chord is None

    def _may_end(self, state: RowState) -> bool:
        """The tune may end here, as the checker would read it ending here (`Reader.finish`): in the body, with
        nothing left open, its last bar closed by a bar line or by the end itself (tunes of the Essen collection
        end `E4z2` and a line break), as a last bar may close."""
        reader = state.reader
        if not reader.in_body or reader.field_line is not None:
            return False
        done = reader.copy().finish()
        if not done.bars or len(done.problems) > len(reader.problems) or done.quirks > reader.quirks:
            return False
        if len(done.bars) > len(reader.bars) and not self._may_close_last(state, done):
            return False
        return (
            _nothing_open(done)
            and not done.ending_open  # abc2midi wants the last variant ending closed (`|]`, `||`, `:|`)
            and done.may_stop_after(done.bars[-1])
            and not done.last_bar.endswith(":")  # no repeat opened at the very end (`|:`, `::`)
        )
