"""Tune books in the layouts the field publishes them in, turned into ABC tunes as this package reads them.

- TheSession's data dump (`tunes.csv`: tune_id, setting_id, name, type, meter, mode, abc, ...) keeps the header in
  columns and the body in `abc`: `session_tune` writes the header back (`T:` name, `R:` type, `M:` meter, `L:1/8`,
  `K:` from a mode such as `Gmajor` or `Edorian`).
- folk-rnn's token files (one tune a paragraph, tokens separated by spaces, `M:6/8 K:Cmaj` headers): `from_folk_rnn`
  joins the tokens and writes `K:C`, `K:Cm`, `K:Cdor` and `L:1/8`, which folk-rnn leaves implicit.
"""

from __future__ import annotations

import regex

# TheSession's modes, spelt as K: writes them.
MODES = {"major": "", "ionian": "", "minor": "m", "aeolian": "m", "dorian": "dor", "mixolydian": "mix",
         "lydian": "lyd", "phrygian": "phr", "locrian": "loc"}
SESSION_MODE = regex.compile(r"^\s*([A-G][#b]?)\s*([A-Za-z]*)\s*$")
FOLK_RNN_KEY = regex.compile(r"^K:([A-G][#b]?)(maj|min|dor|mix|lyd|phr|loc)$")
FOLK_RNN_MODES = {"maj": "", "min": "m"}  # the other modes are spelt alike
FOLK_RNN_HEADER = regex.compile(r"^(M:\S+)\s*\n\s*(K:\S+)", regex.MULTILINE)


def session_key(mode: str) -> str | None:
    """TheSession's `mode` as a K: value (`Gmajor` -> `G`, `Edorian` -> `Edor`, `F#minor` -> `F#m`); None if it is
    no key."""
    match = SESSION_MODE.match(mode or "")
    if not match or match.group(2).lower() not in MODES:
        return None
    return match.group(1) + MODES[match.group(2).lower()]


def session_tune(name: str | None, kind: str | None, meter: str | None, mode: str | None, body: str | None) -> str:
    """One setting of TheSession's dump as an ABC tune (an empty string where the row holds no tune)."""
    key = session_key(mode or "")
    if not body or not body.strip() or key is None:
        return ""
    header = [f"T:{name.strip()}" if name and name.strip() else "", f"R:{kind.strip()}" if kind and kind.strip() else "",
              f"M:{meter.strip()}" if meter and meter.strip() else "", "L:1/8", f"K:{key}"]
    lines = body.replace("\r\n", "\n").replace("\r", "\n").strip()
    return "\n".join(line for line in header if line) + "\n" + lines + "\n"


def is_folk_rnn(book: str) -> bool:
    """Does a tune book look like folk-rnn's tokens: no `X:` lines, and its first key written as `K:Cmaj`?"""
    if any(line.startswith("X:") for line in book.splitlines()):
        return False
    match = FOLK_RNN_HEADER.search(book)
    return bool(match and FOLK_RNN_KEY.match(match.group(2)))


def from_folk_rnn(book: str) -> list[str]:
    """The tunes of a folk-rnn token book as standard ABC."""
    tunes = []
    for block in regex.split(r"\n\s*\n", book.replace("\r\n", "\n").strip()):
        lines = [line.strip() for line in block.splitlines() if line.strip()]
        header = [line for line in lines if regex.match(r"^[A-Za-z]:", line)]
        body = [line for line in lines if not regex.match(r"^[A-Za-z]:", line)]
        fields = []
        for line in header:
            key = FOLK_RNN_KEY.match(line)
            if key:
                tonic, mode = key.groups()
                line = f"K:{tonic}{FOLK_RNN_MODES.get(mode, mode)}"
            fields.append(line)
        if not any(line.startswith("L:") for line in fields):
            fields.insert(max(len(fields) - 1, 0), "L:1/8")  # before K:, which closes the header
        music = "".join("".join(line.split()) for line in body)
        if music:
            tunes.append("\n".join(fields) + "\n" + music + "\n")
    return tunes
