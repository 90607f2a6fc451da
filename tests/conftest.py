"""Shared fixtures. Nothing here reaches a hub: tests build tiny models from configs on disk."""

import finetune

finetune.quiet_bitsandbytes()  # before any test module imports transformers (see its docstring)

import importlib
import json
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


def untrained_samples(count: int = 64, constrain: str = "none") -> list[str]:
    """Tunes from an untrained model (the test recipe's model, fresh weights) prompted with real headers."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from finetune.generation import SampleArguments, generate_tunes
    from finetune.tokenizer import build_abc_tokenizer

    tokenizer = build_abc_tokenizer(256)
    recipe = json.loads(TINY_RECIPE.read_text())["model_config"]
    config = AutoConfig.for_model("llama", vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **recipe)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    prompts = ["M:6/8\nL:1/8\nK:D\n", "M:4/4\nL:1/8\nK:G\n", "M:3/4\nL:1/8\nK:Ador\n", "M:2/4\nL:1/16\nK:C\n"] * (count // 4)
    args = SampleArguments(num_samples=count, max_new_tokens=200, constrain=constrain)
    return [s.text for s in generate_tunes(model, tokenizer, prompts, args)]
