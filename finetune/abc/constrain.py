"""Sampling that keeps the meter: a `transformers.LogitsProcessor` that masks every token that would break the tune.

    processor = MeterLogitsProcessor(tokenizer, max_new_tokens=512)
    model.generate(input_ids, do_sample=True, top_k=8, logits_processor=LogitsProcessorList([processor]), ...)

This module is the search; what may come next is the meter policy's (policy.py says what it refuses). At each
step, for each row, it asks the policy about the likeliest tokens in order, on a copy of that row's `Reader` (the
one reader of ABC text, fed token by token, never re-reading the tune), and keeps the first `keep` that are
allowed; every other token gets -inf, so top-k and top-p sampling, which generate applies after it, choose among
allowed tokens only. It stops looking once top-p's choice cannot change (`_nucleus_settled`), and refuses without
asking what a stuck token or a full bar refuses (`_surely_refused`); both are exact.

In the last ENDING_MARGIN tokens of the budget it steers to an ending instead of being cut off: the end-of-sequence
token as soon as the policy allows it, else a slur closed, a half-written token finished, the open bar closed (it
may be short, as the last bar), with plain notes, rests and bar lines only. Where the model's likeliest token is
the end and the policy cannot allow it yet, it closes what is open first (a slur, a half-written token): masked,
the end would leave the model writing on where it meant to stop, and what it writes there is filler (lines of
`)    (`, invisible rests, quoted text). It closes no bar short for that: the bar is the model's to complete.
It works for any tokenizer: each token's text is decoded once; tokens that are not text on their own (byte pieces, special tokens) are refused. If no token
among the vocabulary keeps the meter, the row keeps only the syntax for that step (its bar will be off), counted in
`self.unconstrained_steps`. A token that a processor before it has masked (-inf; sample.py puts the loop limit
there) is refused too.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass

import regex
import torch
from transformers import LogitsProcessor, PreTrainedTokenizerBase

from . import policy
from .policy import TuneState, whole_pending
from .reader import Reader, token_may_begin

# Tokens left before the budget at which the processor steers to an ending.
ENDING_MARGIN = 32
# Near the budget nothing new opens (no slur, chord, tuplet, quote, grace or decoration): notes, rests, bar lines.
PLAIN_TEXT = regex.compile(r"^[A-Ga-gzx0-9/,'^_= |:\]\)\n]+$")
MUSIC = regex.compile(r"[A-Ga-gzx]")
SOUNDING = frozenset("^_=ABCDEFGabcdefgzx")  # what a note or rest may start with


@dataclass
class RowState(TuneState):
    """A row of the batch: its tune, and whether it has ended."""

    done: bool = False


def _only(order: list[int], weights: list[float] | None, keep) -> tuple[list[int], list[float] | None]:
    """The tokens of `order` that `keep` accepts, with their weights (which follow `order` rank for rank)."""
    kept = [rank for rank, token_id in enumerate(order) if keep(token_id)]
    return [order[rank] for rank in kept], [weights[rank] for rank in kept] if weights else None


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
                policy.advance(state, self.tokenizer.decode(row, skip_special_tokens=True))
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
            allowed = []
            if not ending and order[row][:1] == [self.eos] and not policy.may_end(state):
                allowed = self._close_open(state, order[row])  # the model would end here: close what is open
            if not allowed:
                allowed = self._allowed(state, order[row], row_weights, ending=ending)
            if not allowed and ending:  # no way to the end from here: keep the meter at least
                allowed = self._allowed(state, order[row], row_weights, ending=False)
            if not allowed:  # the meter cannot be kept from here: keep the syntax, and let this bar be off
                self.unconstrained_steps += 1
                # the `keep` likeliest, as top-k would choose them
                syntax_ok = (t for t in order[row] if self.texts[t] and policy.verdict(state, self.texts[t], meter=False))
                allowed = list(itertools.islice(syntax_ok, self.keep))
            mask[row, allowed or [self.eos]] = 0
        kept = scores + mask
        # An earlier processor (the loop limit) masked every token allowed here, say the end of the tune: the syntax
        # wins over the loop, and those tokens stay open, equally likely, so that a row is never left nothing.
        stuck = kept.isneginf().all(-1)
        kept[stuck] = mask[stuck]
        return kept

    def _advance(self, state: RowState, token_id: int) -> None:
        """Feed the token a row has just sampled, and update what the bar policy remembers."""
        if state.done or token_id == self.eos:
            state.done = True
            return
        policy.advance(state, self.texts[token_id] or "")

    def _close_open(self, state: RowState, order: list[int]) -> list[int]:
        """What closes what the tune has open, if anything: a slur, or the token being written (`"Am`, `!tri`),
        completed by one token where one can; [] where nothing is open or nothing closes it at once."""
        writing = state.reader.pending and whole_pending(state.reader.pending) is None
        if state.reader.slurs and not writing and self.close_slur is not None and policy.verdict(state, ")") is not None:
            return [self.close_slur]
        if writing:
            return [t for t in order if self.texts[t] and policy.settles(state, self.texts[t])][: self.keep]
        return []

    def _allowed(self, state: RowState, order: list[int], weights: list[float] | None, ending: bool) -> list[int]:
        allowed, found = [], []
        if ending:  # near the budget: end now, else close slurs, finish the token being written, close the bar
            if policy.may_end(state):
                return [self.eos]
            closing = self._close_open(state, order)
            if closing:
                return closing
            writing = state.reader.pending and whole_pending(state.reader.pending) is None
            if not writing:
                order, weights = _only(order, weights, lambda t: self.texts[t] is None or PLAIN_TEXT.match(self.texts[t]))
                closing = [t for t in order if self.texts[t] and policy.closes_bar(state, self.texts[t])
                           and policy.verdict(state, self.texts[t], meter=False) is not None]  # syntax and policy too
                if closing:
                    return closing[: self.keep]
                if not state.reader.has_notes:  # the last bar may not end the tune: only more music will
                    order, weights = _only(order, weights, lambda t: self.texts[t] and MUSIC.search(self.texts[t]))
        untried = sum(weights) if weights else 0.0
        refused = self._surely_refused(state)
        for rank, token_id in enumerate(order):
            text = self.texts[token_id]
            if token_id == self.eos:
                ok = policy.may_end(state)
            elif refused and text and refused(text):
                ok = False
            else:
                verdict = policy.verdict(state, text) if text is not None else None
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
        if reader.line_start or pending and whole_pending(pending) is None:
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
            or policy.close_bars(state, done) is None
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
