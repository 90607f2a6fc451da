"""Shared fixtures. Nothing here reaches a hub: tests build tiny models from configs on disk."""

import finetune

finetune.quiet_bitsandbytes()  # before any test module imports transformers (see its docstring)

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest.ini runs the tests in one worker per core (pytest-xdist): each worker, and each run it starts, then
    # computes on one thread, so that two workers' torch thread pools do not fight over the same cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parent.parent
TINY_RECIPE = REPO / "tests" / "recipes" / "tiny.json"


@pytest.fixture(scope="session")
def corpus():
    """The prepared music21 corpus as {split: [text, ...]} (prepared on first use, as a run would)."""
    from finetune.args import DataArguments
    from finetune.data import clean_splits, load_raw_splits

    tunes, _ = clean_splits(load_raw_splits(DataArguments()), DataArguments())
    return {split: tunes[split]["text"] for split in tunes}


def run_cli(argv, capsys, script="run_finetune"):
    """`python SCRIPT.py ARGV` in this process, through the script's own cli(): (exit code, stdout, stderr).
    It spares a test the ~10 s a new process takes to import torch, transformers and datasets."""
    entry = importlib.import_module(script)
    old = sys.argv
    sys.argv = [f"{script}.py", *map(str, argv)]
    try:
        code = entry.cli()
    except SystemExit as e:  # argparse's --help
        code = e.code
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
