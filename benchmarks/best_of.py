"""Best of n, measured: what each more candidate per prompt buys and costs, from one sampling.

    python benchmarks/best_of.py runs/music_abc_cpu --split test --num_samples 256 --best_of 4

Every prompt (the headers of held-out tunes, drawn as evaluate_checkpoints.py draws them) is sampled `--best_of`
times, own and constrained, in one generate_tunes call over each prompt repeated, as best of n samples its
candidates. For n = 1, 2, 4, ... up to `--best_of`, each prompt keeps the best of its first n candidates by
generation.rerank_key, with the training tunes' Typicality as evaluate_checkpoints.py ranks them, and the kept
tunes are scored as evaluate_checkpoints.py scores a checkpoint's tunes: the checker, then the musical measures
against the same held-out real tunes, beside the real tunes' own row. Best of n costs n times the sampling of one
tune per prompt; the time column is that share of the measured sampling.

Rows go to benchmarks/results/best-of.{json,md} (`--results`) with the run, its step, the machine and the commit.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from tunebook import cpu_name

from finetune.abc.check import check_tunes, resolve_checker, summarize
from finetune.abc.measures import Typicality
from finetune.evaluation.checkpoints import Scorer, evaluation_tunes, find_checkpoints, read_run, tune_kinds
from finetune.generation import SampleArguments, generate_tunes, rerank_key
from finetune.model import load_checkpoint
from finetune.recipe import cpu_has_native_bf16
from finetune.tables import markdown_table

REPO = Path(__file__).resolve().parent.parent
COLUMNS = ["tunes", "best_of", "seconds", "validity", "bar_consistency", "truncation", "overlapped_area",
           "tonic_ending", "repeat_sign", "distinct_bars", "bar_runs", "bars"]


def scored(score: Scorer, kind: str, n: int, seconds: float, kept: list, checks: list[dict]) -> dict:
    """One row: the kept tunes' verdicts and musical measures (the table's columns, then every measure)."""
    texts = [sample.text for sample in kept]
    music = score.music(texts)
    return {
        "tunes": kind, "best_of": n, "seconds": round(seconds), **summarize(checks),
        "truncation": sum(not sample.ended for sample in kept) / len(kept),
        **{name: value for name, value in music.items() if name != "music"},
        "bars": music["music"]["form_and_tonality"]["bars"], "music": music["music"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="the output_dir of a run_finetune.py run")
    parser.add_argument("--step", type=int, help="the checkpoint's step (default: the last)")
    parser.add_argument("--split", default="test", choices=["validation", "test"], help="held-out tunes to prompt from")
    parser.add_argument("--num_samples", type=int, default=256, help="prompts")
    parser.add_argument("--best_of", type=int, default=4, help="candidates sampled per prompt")
    parser.add_argument("--seed", type=int, default=3407, help="sampling seed")
    parser.add_argument("--candidates", help="also write every candidate to this .jsonl (to try other rankings)")
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "results" / "best-of"),
                        help="where the table goes (.json and .md are added)")
    args = parser.parse_args()

    data_args, resolved = read_run(args.run_dir)
    checkpoints = find_checkpoints(args.run_dir)
    checkpoint = next((c for c in checkpoints if c.step == args.step), None) if args.step else checkpoints[-1]
    if checkpoint is None:
        sys.exit(f"{args.run_dir} has no checkpoint of step {args.step}; steps: {[c.step for c in checkpoints]}")
    sample_args = SampleArguments(num_samples=args.num_samples, seed=args.seed).settled(resolved.get("sampling"))
    tunes = evaluation_tunes(data_args, args.split, sample_args)
    score, checker = Scorer(tunes.training, tunes.music_reference), resolve_checker("auto")
    typical = Typicality(tunes.training)
    model, tokenizer = load_checkpoint(checkpoint.path)
    counts = sorted({*(2**i for i in range(args.best_of.bit_length()) if 2**i <= args.best_of), args.best_of})

    real_checks = check_tunes(tunes.real, checker)
    reference = {"tunes": "real", "best_of": "", "seconds": "", **score(tunes.real, real_checks, tunes.prompts),
                 **score.music(tunes.ceiling)}
    reference["bars"] = reference.pop("music")["form_and_tonality"]["bars"]
    rows, saved = [], []
    for kind, kind_args in tune_kinds(sample_args).items():
        start = time.perf_counter()
        candidates = generate_tunes(model, tokenizer, [p for p in tunes.prompts for _ in range(args.best_of)],
                                    replace(kind_args, best_of=1))
        seconds = time.perf_counter() - start
        checks = check_tunes([c.text for c in candidates], checker)
        keys = [rerank_key(c, typical) for c in candidates]  # once each: every n ranks the same candidates
        tokens = sum(c.new_tokens for c in candidates)
        saved += [json.dumps({"tunes": kind, "prompt_index": i // args.best_of, **asdict(c)}) + "\n"
                  for i, c in enumerate(candidates)]
        print(f"{kind}: {len(candidates)} candidates in {seconds:.0f} s, {tokens / seconds:.0f} new tokens/s", flush=True)
        for n in counts:
            groups = [range(i, i + n) for i in range(0, len(candidates), args.best_of)]
            kept = [max(group, key=keys.__getitem__) for group in groups]
            rows.append(scored(score, kind, n, seconds * n / args.best_of, [candidates[j] for j in kept],
                               [checks[j] for j in kept]))
    rows.append(reference)
    if args.candidates:
        Path(args.candidates).write_text("".join(saved))

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    bf16 = "AVX512-BF16" if cpu_has_native_bf16() else "no native bf16"
    about = {"run": args.run_dir, "step": checkpoint.step, "split": args.split, "prompts": len(tunes.prompts),
             "seed": args.seed, "commit": commit, "date": time.strftime("%Y-%m-%d"),
             "machine": f"{cpu_name()}, {len(os.sched_getaffinity(0))} CPUs, {bf16}"}
    results = Path(args.results)
    results.with_suffix(".json").write_text(json.dumps({**about, "rows": rows}, indent=2) + "\n")
    cells = ([(f"{row[c]:.1f}" if c == "bars" else f"{row[c]:.3f}") if isinstance(row.get(c), float) else row.get(c, "")
              for c in COLUMNS] for row in rows)
    table = "; ".join(f"{k} {v}" for k, v in about.items()) + "\n\n" + markdown_table(COLUMNS, cells)
    results.with_suffix(".md").write_text(table)
    print(table, end="")


if __name__ == "__main__":
    main()
