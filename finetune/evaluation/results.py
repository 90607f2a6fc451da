"""What an evaluation writes: the table's columns, metrics.json, metrics.csv, metrics.md and metrics.png."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path

from ..tables import markdown_table

# The kinds of generated tune a checkpoint is scored on (evaluate_checkpoints.py), as the report names them.
TUNE_KINDS = {
    "own": "the model's own tunes: plain sampling, nothing masked",
    "constrained": "constrained sampling: MeterLogitsProcessor masks tokens that would break ABC syntax or the meter, "
                   "and LoopLimitLogitsProcessor a block of tokens repeated more than max_repeats times running",
}
# Columns of the table, in order, with how each is written; the reference row leaves the model-only ones out.
# A checkpoint has a row per kind of tune (`tunes`: "own", "constrained"); the real tunes' row is "real".
COLUMNS = {
    "step": "{}",
    "tunes": "{}",
    "loss": "{:.4f}",
    "perplexity": "{:.3f}",
    "bits_per_char": "{:.4f}",
    "accuracy": "{:.4f}",
    "validity": "{:.3f}",
    "bar_consistency": "{:.3f}",
    "header_adherence": "{:.3f}",
    "truncation": "{:.3f}",
    "loops": "{:.3f}",
    "copy_max": "{:.3f}",
    "copy_share": "{:.3f}",
    "diversity": "{:.3f}",
    "overlapped_area": "{:.3f}",
    "tonic_ending": "{:.3f}",
    "repeat_sign": "{:.3f}",
    "distinct_bars": "{:.3f}",
    "bar_runs": "{:.3f}",
    "out_of_key": "{:.3f}",
}
# The musical measures' columns beside the mean overlapped area (finetune.abc.measures: form and tonality).
MUSIC_COLUMNS = ("tonic_ending", "repeat_sign", "distinct_bars", "bar_runs", "out_of_key")
PLOTTED = [name for name in COLUMNS if name not in ("step", "tunes", "perplexity")]
TOKEN_METRICS = ("loss", "bits_per_char", "accuracy")  # the checkpoint's, not its samples'


def format_cell(name: str, value) -> str:
    """A value of column `name` as the tables write it; missing or NaN is a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return COLUMNS[name].format(value)


def results_table(rows: list[dict]) -> str:
    return markdown_table(COLUMNS, ([format_cell(name, row.get(name)) for name in COLUMNS] for row in rows))


def _pyplot():
    """matplotlib's pyplot, drawing off screen (evaluations run on machines with no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig, path: Path) -> None:
    """Write the figure whole or not at all, then free it."""
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    _pyplot().close(fig)
    os.replace(tmp, path)


def plot_metrics(rows: list[dict], reference: dict, path: Path) -> None:
    """One panel per metric against step; the reference (real tunes) as a dashed line where it applies."""
    plt = _pyplot()
    columns = 4
    fig, axes = plt.subplots(math.ceil(len(PLOTTED) / columns), columns, figsize=(13, 10), sharex=True)
    kinds = [kind for kind in TUNE_KINDS if any(row["tunes"] == kind for row in rows)]
    for ax, name in zip(axes.flat, PLOTTED):
        for kind in kinds[:1] if name in TOKEN_METRICS else kinds:
            chosen = [row for row in rows if row["tunes"] == kind]
            label = None if name in TOKEN_METRICS else f"{kind} tunes"
            ax.plot([row["step"] for row in chosen], [row.get(name, float("nan")) for row in chosen], marker="o", label=label)
        if reference.get(name) is not None:
            ax.axhline(reference[name], color="tab:green", linestyle="--", label="real tunes")
        if name not in TOKEN_METRICS:
            ax.legend(fontsize=7)
        ax.set_title(name.replace("_", " "), fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(PLOTTED):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("optimizer step")
    _save_figure(fig, path)


def plot_music(rows: list[dict], reference: dict, path: Path) -> None:
    """The last step's own and constrained tunes' mean histograms over the real tunes' (the ceiling's), one panel per
    feature: where the generated tunes' pitches, intervals, lengths and onsets part from real music."""
    plt = _pyplot()
    last = [row for row in rows if row["step"] == rows[-1]["step"] and "music" in row]
    if "music" not in reference or not last:
        return
    names = list(reference["music"]["histograms"])
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2))
    for ax, name in zip(axes, names):
        for label, row, style in [("real", reference, "--"), *((row["tunes"], row, "-") for row in last)]:
            values = row["music"]["histograms"].get(name)
            if values:
                area = row["music"]["distribution"][name]["overlapped_area"]
                ax.plot(range(len(values)), values, style, marker=".", label=f"{label} (OA {area:.2f})")
        ax.set_title(name.replace("_", " "), fontsize=10)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(f"step {rows[-1]['step']}: mean histograms against the real tunes", fontsize=10)
    _save_figure(fig, path)


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_results(out: Path, rows: list[dict], reference: dict, settings: dict) -> str:
    """metrics.{json,csv,md,png} and music.png in `out`, each written whole or not at all; returns the Markdown table."""
    table = results_table([*rows, {**reference, "step": "reference"}])
    _write(out / "metrics.json", json.dumps({"settings": settings, "rows": rows, "reference": reference}, indent=2) + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["step", "tunes", "checkpoint", *list(COLUMNS)[2:]], extrasaction="ignore")
    writer.writeheader()
    writer.writerows([*rows, {**reference, "step": "reference", "checkpoint": "real tunes"}])
    _write(out / "metrics.csv", buffer.getvalue())
    _write(out / "metrics.md", table)
    plot_metrics(rows, reference, out / "metrics.png")
    plot_music(rows, reference, out / "music.png")
    return table
