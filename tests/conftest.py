"""Shared fixtures. Nothing here reaches a hub: tests build tiny models from configs on disk."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
TINY_RECIPE = REPO / "tests" / "recipes" / "tiny.json"


@pytest.fixture(scope="session")
def corpus():
    """The prepared music21 corpus as {split: [text, ...]} (prepared on first use, as a run would)."""
    from finetune.args import DataArguments
    from finetune.data import clean_splits, load_raw_splits

    tunes, _ = clean_splits(load_raw_splits(DataArguments()), DataArguments())
    return {split: tunes[split]["text"] for split in tunes}


def run_cli(argv, capsys):
    """run_finetune.cli() in this process: (exit code, stdout, stderr)."""
    import run_finetune

    old = sys.argv
    sys.argv = ["run_finetune.py", *map(str, argv)]
    try:
        code = run_finetune.cli()
    finally:
        sys.argv = old
    out = capsys.readouterr()
    return code, out.out, out.err


def run_finetune(recipe, *args, launcher=(sys.executable,), env=None):
    """The real entry point in a subprocess, as a user runs it; fails the test on a non-zero exit."""
    result = subprocess.run(
        [*launcher, "run_finetune.py", str(recipe), *map(str, args)],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, **(env or {})},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result
