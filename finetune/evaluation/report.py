"""RUN_DIR/eval/report.html: metrics, curves, and sampled tunes as sheet music with a play button, each
beside the real tune whose header prompted it. One self-contained file: abcjs (MIT, its licence notice
included), the plots and the tunes are all inside, so it opens offline from disk.

    python evaluate_checkpoints.py runs/music_abc_quick --report       # evaluate, then write the report
    python -m finetune.evaluation.report runs/music_abc_quick [--steps 50,154]     # the report of an evaluated run
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import os
import sys
from pathlib import Path

from ..abc.check import check_tunes
from ..abc.measures import tune_flags
from ..errors import UserError
from ..loops import in_a_loop
from ..run_dir import EVAL_FOLDER
from .results import COLUMNS, MUSIC_COLUMNS, TUNE_KINDS, format_cell

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def samples_folder(step: int | str, kind: str) -> str:
    """Where under eval/samples/ a checkpoint's tunes of one kind are written."""
    return f"step-{step}" if kind == "own" else f"step-{step}-{kind}"


def _asset(name: str) -> str:
    return (ASSETS / name).read_text(encoding="utf-8")


def _image(path: Path, alt: str) -> str:
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img class="plot" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _read_samples(folder: Path) -> list[dict]:
    path = folder / "samples.jsonl"
    if not path.is_file():
        raise UserError(f"{folder} has no samples.jsonl; run evaluate_checkpoints.py on this run again")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _checks(records: list[dict], checker: str) -> list[dict]:
    """Each sample's verdict as samples.jsonl keeps it; samples written before it kept them are checked now."""
    if all("valid" in r for r in records):
        return records
    return check_tunes([r["text"] for r in records], checker)


def _metrics_table(report: dict) -> str:
    rows = [*report["rows"], {**report["reference"], "step": "real tunes", "tunes": "real"}]
    head = "".join(f"<th>{html.escape(name)}</th>" for name in COLUMNS)
    body = []
    for row in rows:
        cells = [html.escape(format_cell(name, row.get(name))) for name in COLUMNS]
        css = ' class="reference"' if row["step"] == "real tunes" else f' class="{row.get("tunes", "own")}"'
        body.append(f"<tr{css}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f'<table class="metrics"><tr>{head}</tr>{"".join(body)}</table>'


def _tune_card(tune_id: str, label: str, record: dict, check: dict) -> str:
    verdict = '<span class="valid">valid</span>' if check["valid"] else f'<span class="invalid">{len(check["errors"])} problem(s)</span>'
    bars = f'{check["bars_total"] - check["bars_off"]}/{check["bars_total"]} bars on the meter' if check["bars_total"] else "no bars"
    ending = (" · in a loop" if in_a_loop(record["text"]) else "") + ("" if record["ended"] else " · truncated")
    findings = "; ".join(check["errors"][:3]) + (" …" if len(check["errors"]) > 3 else "")
    heard = tune_flags(record["text"])  # what the ear would catch that validity does not
    return (
        f'<div class="tune"><div class="head"><strong>{html.escape(label)}</strong> {verdict} '
        f'<span>{html.escape(bars)}{ending}</span>'
        f'<button class="play" id="{tune_id}-play" type="button">&#9654; play</button></div>'
        f'<div class="findings">{html.escape(findings)}</div>'
        + (f'<div class="music-flags">{html.escape("; ".join(heard))}</div>' if heard else "")
        + f'<div class="score" id="{tune_id}-score"></div>'
        f'<details><summary>ABC</summary><pre>{html.escape(record["text"])}</pre></details></div>'
    )


def _music_line(row: dict, reference: dict) -> str:
    """The musical measures of a row beside the real tunes' (the ceiling): overlapped area per feature, form, key."""
    if "music" not in row or "music" not in reference:  # evaluated before the measures existed
        return ""
    areas = " · ".join(
        f'{name.replace("_", " ")} {found["overlapped_area"]:.2f} '
        f'(real {reference["music"]["distribution"][name]["overlapped_area"]:.2f})'
        for name, found in row["music"]["distribution"].items() if found["overlapped_area"] is not None
    )
    shares = " · ".join(
        f'{name.replace("_", " ")} {format_cell(name, row.get(name))} (real {format_cell(name, reference.get(name))})'
        for name in MUSIC_COLUMNS
    )
    return f'<p class="music">Overlapped area against real tunes: {html.escape(areas)}</p><p class="music">{html.escape(shares)}</p>'


def parse_steps(text: str | None) -> list[int] | None:
    """`50,154` -> [50, 154]; None stays None (first and last)."""
    if not text:
        return None
    try:
        return [int(step) for step in text.split(",")]
    except ValueError:
        raise UserError(f"report steps are step numbers separated by commas, not {text!r}") from None


def chosen_steps(rows: list[dict], steps: list[int] | None) -> list[int]:
    """The steps to show: those asked for, else the first and the last evaluated."""
    known = list(dict.fromkeys(row["step"] for row in rows))  # a step has a row per kind of tune
    if steps:
        missing = [s for s in steps if s not in known]
        if missing:
            raise UserError(f"no checkpoint at step {missing[0]}; the steps there are {known}")
        return steps
    return sorted({known[0], known[-1]})


def build_report(run_dir: str, steps: list[int] | None = None, folder: str = EVAL_FOLDER) -> str:
    run, evaluation = Path(run_dir), Path(run_dir) / folder
    metrics_path = evaluation / "metrics.json"
    if not metrics_path.is_file():
        raise UserError(f"{run_dir} has not been evaluated (no {folder}/metrics.json); run evaluate_checkpoints.py {run_dir}")
    report = json.loads(metrics_path.read_text())
    settings = report["settings"]
    references = _read_samples(evaluation / "samples" / "reference")
    reference_checks = _checks(references, settings["checker"])
    tunes, sections = [], []
    for step in chosen_steps(report["rows"], steps):
        for row in (r for r in report["rows"] if r["step"] == step):
            kind = row.get("tunes", "own")  # runs evaluated before constrained sampling have own tunes only
            samples = _read_samples(evaluation / "samples" / samples_folder(step, kind))
            name = f"step {step}" + ("" if kind == "own" else f" · {kind}")
            pairs = []
            for i, (sample, check) in enumerate(zip(samples, _checks(samples, settings["checker"]))):
                sample_id, real_id = f"s{step}{kind[0]}-{i}", f"r{step}{kind[0]}-{i}"
                tunes.append({"id": sample_id, "abc": f"X:1\n{sample['text']}"})
                cards = [_tune_card(sample_id, f"{name} · sample {i + 1}", sample, check)]
                if i < len(references):
                    tunes.append({"id": real_id, "abc": f"X:1\n{references[i]['text']}"})
                    cards.append(_tune_card(real_id, f"real tune {i + 1} (same header)", references[i], reference_checks[i]))
                pairs.append(f'<div class="pair {kind}">{"".join(cards)}</div>')
            sections.append(
                f'<h2 id="{samples_folder(step, kind)}">Step {step}, {html.escape(kind)} tunes: {len(samples)} samples beside '
                f'the real tunes that gave their headers</h2><p class="kind">{html.escape(TUNE_KINDS[kind])}. '
                f'Validity {row["validity"]:.2f} (real {report["reference"]["validity"]:.2f}) · bar consistency '
                f'{row["bar_consistency"]:.2f} (real {report["reference"]["bar_consistency"]:.2f})</p>'
                f'{_music_line(row, report["reference"])}{"".join(pairs)}'
            )
    sampling = ", ".join(
        f"{k} {'up to the context' if v is None else v}" for k, v in settings["sampling"].items() if k != "batch_size"
    )
    data = json.dumps(tunes).replace("</", "<\\/")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(str(run))}: evaluation report</title>
<script>
window.reportErrors = [];
window.addEventListener("error", (e) => window.reportErrors.push(String(e.message)));
const reportConsoleError = console.error;
console.error = function (...args) {{ window.reportErrors.push(args.join(" ")); reportConsoleError.apply(console, args); }};
</script>
<style>{_asset("report.css")}</style></head>
<body>
<h1>{html.escape(str(run))}</h1>
<p>{settings["prompts"]} prompts from the {html.escape(settings["split"])} split (fields {html.escape(settings["prompt_fields"])}),
checker {html.escape(settings["checker"])}; sampling: {html.escape(sampling)}.</p>
<h2>Metrics by checkpoint (last row: the real tunes that gave the prompts)</h2>
{_metrics_table(report)}
<h2>Metrics against step, and the training curves</h2>
<div class="plots">{_image(evaluation / "music.png", "mean histograms of the last step's tunes against real tunes")}
{_image(evaluation / "metrics.png", "metrics against step")}
{_image(run / "loss.png", "training and evaluation loss")}</div>
{"".join(sections)}
<footer>Sheet music and audio sequence by abcjs {html.escape(_asset("ABCJS_VERSION").strip())}
(MIT licence, below); sound from WebAudio oscillators.
<details><summary>abcjs licence</summary><pre>{html.escape(_asset("abcjs-LICENSE.md"))}</pre></details></footer>
<script type="application/json" id="tunes">{data}</script>
<script>{_asset("abcjs-basic-min.js")}</script>
<script>{_asset("report.js")}</script>
</body></html>
"""


def write_report(run_dir: str, steps: list[int] | None = None, folder: str = EVAL_FOLDER) -> Path:
    """Write RUN_DIR/`folder`/report.html (atomically) and return its path."""
    text = build_report(run_dir, steps, folder)
    path = Path(run_dir) / folder / "report.html"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune.evaluation.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir")
    parser.add_argument("--steps", help="comma-separated steps to show (default: the first and the last)")
    args = parser.parse_args(argv)
    try:
        path = write_report(args.run_dir, parse_steps(args.steps))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print(f"Wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
