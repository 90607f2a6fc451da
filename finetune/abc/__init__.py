"""The ABC language, in one place: reading, cleaning, checking, transposing and rescaling tunes, and keeping
sampling to the meter. It imports nothing else of this project; everything else imports it.

    text.py    tune books: bytes to text, tunes split and cleaned, the header/body boundary, a rewriting command
    reader.py  the one reader of tune text, incremental: tokens, durations, bars, which bars keep the meter
    check.py   the strict checker (abc2midi or the reader), also `python -m finetune.abc.check FILE...`
    constrain.py  MeterLogitsProcessor: sampling that keeps ABC syntax and the meter, on the same reader
    transpose.py  exact transposition (keys, accidentals, chord symbols), also `python -m finetune.abc.transpose`
    rescale.py    the same tune at another note value (6/8 with L:1/8 as 6/4 with L:1/4), also `python -m finetune.abc.rescale`
"""

from .text import DEFAULT_KEEP_FIELDS, FIELD_LINE, Tune, clean_tune, header_length, read_text, split_tunes

__all__ = ["DEFAULT_KEEP_FIELDS", "FIELD_LINE", "Tune", "clean_tune", "header_length", "read_text", "split_tunes"]
