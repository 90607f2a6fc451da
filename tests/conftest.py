"""Shared fixtures. Nothing here reaches a hub: tests build tiny models from configs on disk."""

import os
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
