"""Fingerprints of behaviour, to prove that a refactor changed none: run it before, then after, and compare.

    python benchmarks/equivalence.py --out before.json            # at the old commit
    python benchmarks/equivalence.py --out after.json --compare before.json

Three fingerprints, each a digest with the counts behind it:
- `checker`: the Python checker's verdict (errors, bars, bars off) on every tune of the prepared corpus, and
  abc2midi's on every one when it is on PATH;
- `samples`: tunes sampled from a checkpoint trained here by the quick recipe (own and constrained, several
  seeds), token for token;
- `losses`: the quick recipe's first training losses, one logged per step.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from finetune.abc.check import check_tunes
from finetune.args import DataArguments
from finetune.data import clean_splits, load_raw_splits

REPO = Path(__file__).resolve().parent.parent
STEPS = 20
SEEDS = (0, 1, 3407)
PROMPTS = 8


def digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def corpus_tunes() -> list[str]:
    tunes, _ = clean_splits(load_raw_splits(DataArguments()), DataArguments())
    return [text for split in ("train", "validation", "test") for text in tunes[split]["text"]]


def checker_fingerprint(tunes: list[str]) -> dict:
    found = {}
    checkers = ["python"] + (["abc2midi"] if shutil.which("abc2midi") else [])
    for checker in checkers:
        verdicts = [[r["valid"], r["errors"], r["bars_total"], r["bars_off"]] for r in check_tunes(tunes, checker)]
        found[checker] = {"tunes": len(verdicts), "valid": sum(v[0] for v in verdicts), "digest": digest(verdicts)}
    return found


def train_quick(out: Path) -> list[float]:
    subprocess.run(
        [sys.executable, "run_finetune.py", "recipes/music_abc_quick.json", "--max_steps", str(STEPS),
         "--logging_steps", "1", "--eval_strategy", "no", "--save_strategy", "no", "--output_dir", str(out)],
        cwd=REPO, check=True, capture_output=True,
    )
    state = json.loads((out / "trainer_state.json").read_text())
    return [row["loss"] for row in state["log_history"] if "loss" in row]


def samples_fingerprint(run: Path, prompts: list[str]) -> dict:
    from finetune.generation import SampleArguments, generate_tunes
    from finetune.model import load_checkpoint

    model, tokenizer = load_checkpoint(str(run))
    found = {}
    for kind, extra in (("own", {"constrain": "none", "max_repeats": 0}), ("constrained", {})):
        tunes = []
        for seed in SEEDS:
            args = SampleArguments(num_samples=len(prompts), seed=seed, max_new_tokens=160, **extra)
            tunes += [s.text for s in generate_tunes(model, tokenizer, prompts, args)]
        found[kind] = {"tunes": len(tunes), "digest": digest(tunes), "first": tunes[0]}
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="where to write the fingerprints (JSON)")
    parser.add_argument("--compare", help="fingerprints written before; exit 1 if any differs")
    args = parser.parse_args()
    tunes = corpus_tunes()
    prompts = [tune.split("K:")[0] + "K:" + tune.split("K:")[1].split("\n")[0] + "\n" for tune in tunes[-PROMPTS:]]
    with tempfile.TemporaryDirectory() as scratch:
        losses = train_quick(Path(scratch) / "quick")
        found = {
            "losses": {"steps": len(losses), "values": losses},
            "samples": samples_fingerprint(Path(scratch) / "quick", prompts),
            "checker": checker_fingerprint(tunes),
        }
    Path(args.out).write_text(json.dumps(found, indent=2) + "\n")
    if not args.compare:
        print(json.dumps(found, indent=2))
        return 0
    before = json.loads(Path(args.compare).read_text())
    differ = [name for name in found if found[name] != before.get(name)]
    for name in found:
        print(f"{name:8s} {'DIFFERS' if name in differ else 'same'}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
