"""The ABC language, in one place: reading, cleaning, checking, transposing and rescaling tunes, and keeping
sampling to the meter. It imports nothing else of this project; everything else imports it.

    text.py    tune books: bytes to text, tunes split and cleaned, the header/body boundary, a rewriting command
    reader.py  the one reader of tune text, incremental: tokens, durations, bars, which bars keep the meter; beside it,
               Abc2midiQuirks counts what abc2midi refuses although ABC allows it
    check.py   the strict checker (abc2midi or the reader), also `python -m finetune.abc.check FILE...`
    policy.py  what may come next in a tune being written: named checks that give a verdict on a text
    constrain.py  MeterLogitsProcessor: the search over ranked tokens that samples within the policy
    transpose.py  exact transposition (keys, accidentals, chord symbols), also `python -m finetune.abc.transpose`
    rescale.py    the same tune at another note value (6/8 with L:1/8 as 6/4 with L:1/4), also `python -m finetune.abc.rescale`
    measures.py   the music against real tunes (distribution, form, tonality), also `python -m finetune.abc.measures`
    layouts.py    tune books as the field publishes them (TheSession's columns, folk-rnn's tokens) as ABC tunes
"""

from .text import DEFAULT_KEEP_FIELDS, FIELD_LINE, Tune, clean_tune, header_length, read_text, split_tunes

__all__ = ["DEFAULT_KEEP_FIELDS", "FIELD_LINE", "Tune", "clean_tune", "header_length", "read_text", "split_tunes"]
