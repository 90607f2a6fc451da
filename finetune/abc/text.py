"""Split ABC tune books into tunes and clean each tune the way ABC language-model work does.

Cleaning follows the field (folk-rnn, Text-to-Music, NotaGen): `%` comments and `%%` directives go,
free-text header fields (X: N: Z: S: B: O: ...) go, the fields that shape the music (M: L: K:, plus
R: Q: P: for conditioning) stay, and multi-voice tunes are left out of a single-voice corpus.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

FIELD_LINE = re.compile(r"^([A-Za-z]):(.*)$")
# A `%` starts a comment unless escaped as `\%` (ABC 2.1, section 2.2).
INLINE_COMMENT = re.compile(r"(?<!\\)%.*$")
# Some Essen files hold German text in CP437 read as Latin-1: U+0081 is CP437's "ü", U+0084 "ä", U+0094 "ö".
C1_CONTROLS = re.compile("[\x80-\x9f]")

# Fields that carry music or its conditioning. Everything else (X: T: N: Z: S: B: O: A: C: D: F: G: H:
# I: W: w: ...) is free text or bookkeeping; a recipe may keep more through DataArguments.keep_fields.
DEFAULT_KEEP_FIELDS = "MLKRQP"


@dataclass(frozen=True)
class Tune:
    """One cleaned tune: `text` is what the model trains on; `title` is kept beside it, not inside it."""

    text: str
    title: str


def read_text(path: Path) -> str:
    """A tune book's text. ABC collections predate UTF-8; fall back to Latin-1, which decodes any byte."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def header_length(text: str) -> int:
    """Characters up to and including the first K: line: the header a prompt carries, the rest is the body."""
    end = ("\n" + text).find("\nK:")
    if end < 0:
        return 0
    line_end = text.find("\n", end)
    return len(text) if line_end < 0 else line_end + 1


def read_book(file: str) -> list[str] | None:
    """The tunes of the tune book `file` for a command, or None where it cannot be read, the reason on stderr."""
    try:
        return split_tunes(read_text(Path(file)))
    except OSError as e:
        print(f"error: {file}: {e.strerror}", file=sys.stderr)
        return None


def rewrite_book(file: str, rewrite: Callable[[str], tuple[str | None, str | None]], verb: str) -> int:
    """The command-line loop of a rewriting (transpose.py, rescale.py): every tune of `file` rewritten on stdout, a
    tune it refuses kept as it is with the reason on stderr. Exit status: 0, 1 when a tune was refused, 2 unreadable."""
    tunes = read_book(file)
    if tunes is None:
        return 2
    refused = 0
    for tune in tunes:
        rewritten, reason = rewrite(tune)
        if rewritten is None:
            refused += 1
            print(f"% not {verb}: {reason}", file=sys.stderr)
            rewritten = tune
        print(rewritten.rstrip("\n") + "\n")
    return 1 if refused else 0


def split_tunes(book: str) -> list[str]:
    """Cut a tune book into raw tunes: each starts at an `X:` line and ends at a blank line (ABC 2.1).

    A file with no `X:` line is read as one tune, so single-tune files without an index still load.
    """
    lines = book.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if not any(line.startswith("X:") for line in lines):
        return [book.strip()] if book.strip() else []
    tunes, current = [], None
    for line in lines:
        if line.startswith("X:"):
            if current:
                tunes.append("\n".join(current))
            current = [line]
        elif current is not None:
            if line.strip():
                current.append(line)
            else:
                tunes.append("\n".join(current))
                current = None
    if current:
        tunes.append("\n".join(current))
    return tunes


def clean_tune(raw: str, keep_fields: str = DEFAULT_KEEP_FIELDS, single_voice: bool = True) -> Tune | str:
    """Return the cleaned tune, or a short reason why it is unusable (the caller counts reasons).

    Header fields are written without the optional space after the colon (`M: 6/8` -> `M:6/8`) so that
    prompts such as `M:6/8` match every tune the same way.
    """
    title, lines, has_key, in_body, body_lines, music_before_key = "", [], False, False, 0, False
    raw = C1_CONTROLS.sub(lambda m: bytes([ord(m.group())]).decode("cp437"), raw).replace("\t", " ")
    for line in raw.split("\n"):
        if line.startswith("%"):
            continue
        line = INLINE_COMMENT.sub("", line).rstrip()
        if not line:
            continue
        field = FIELD_LINE.match(line)
        # In the body, `|:` style text never matches: a field line is one letter then a colon.
        if field:
            letter, value = field.group(1), field.group(2).strip()
            if letter == "V" and single_voice:
                return "multi-voice"
            if letter == "T" and not title:
                title = value
            if letter == "K":
                has_key, in_body = True, True
            if letter in keep_fields:
                lines.append(f"{letter}:{value}")
            continue
        if not in_body:
            # Music before the K: line breaks the ABC header; such a tune is not parseable.
            music_before_key = True
        lines.append(line)
        body_lines += 1
    if not has_key:
        return "no K: field"
    if music_before_key:
        return "music before K: field"
    if body_lines == 0:
        return "empty body"
    return Tune(text="\n".join(lines) + "\n", title=title)
