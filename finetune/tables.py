"""Markdown tables: the one way the commands, the benchmarks and the recipe list write them."""

from __future__ import annotations

from collections.abc import Iterable


def markdown_table(header: Iterable[str], rows: Iterable[Iterable]) -> str:
    """A GitHub Markdown table of `rows` (cells already written as text, or anything `str` writes) under `header`."""
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
