"""Runs that die: a SIGKILLed run re-run with the same command ends exactly where an unbroken run ends."""

import json
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO, TINY_RECIPE, run_finetune
from safetensors.torch import load_file

# 40 rows of tunes, 4 rows per optimizer step (2 x 2 accumulation): 10 steps an epoch, so 24 steps
# cross two epoch boundaries; a checkpoint every 5 steps.
RUN = [
    "--max_train_samples", "160", "--max_seq_length", "128", "--per_device_train_batch_size", "2",
    "--gradient_accumulation_steps", "2", "--max_steps", "24", "--save_steps", "5", "--eval_steps", "100",
    "--logging_steps", "1", "--warmup_steps", "3",
]


def command(out, optim, bf16=False):
    return [sys.executable, "run_finetune.py", str(TINY_RECIPE), *RUN, "--optim", optim, "--bf16", str(bf16).lower(),
            "--output_dir", str(out)]


def run_to_end(out, optim, bf16=False):
    return run_finetune(TINY_RECIPE, *command(out, optim, bf16)[3:])


def kill_after_first_checkpoint(out, optim, rng, bf16=False):
    """Start the run, wait for its first complete checkpoint, then SIGKILL it a random moment later."""
    process = subprocess.Popen(command(out, optim, bf16), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list(out.glob("checkpoint-*/trainer_state.json")):
        assert process.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.02)
    time.sleep(rng.uniform(0, 0.5))
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"


def weights(out):
    return load_file(out / "model.safetensors")


def losses(out):
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [(entry["step"], entry["loss"]) for entry in history if "loss" in entry]


@pytest.mark.slow
@pytest.mark.parametrize("optim, bf16", [("adamw_torch", False), ("adamw_8bit", False), ("adamw_8bit", True)])
def test_killed_run_resumed_ends_bit_identical_to_an_unbroken_run(optim, bf16, tmp_path):
    """Same final weights and loss log, with gradient accumulation, across epoch boundaries.

    Data order, RNG states, the scheduler and the (8-bit) optimizer state all come back from the checkpoint.
    On the CPU this holds bit for bit in bf16 too; GPU kernels that are not deterministic may differ slightly.
    """
    run_to_end(tmp_path / "unbroken", optim, bf16)
    killed = tmp_path / "killed"
    kill_after_first_checkpoint(killed, optim, random.Random(optim), bf16)
    assert not (killed / "model.safetensors").exists()  # it really died mid-run
    result = run_to_end(killed, optim, bf16)
    assert "Resuming from" in result.stdout
    expected, resumed = weights(tmp_path / "unbroken"), weights(killed)
    assert expected.keys() == resumed.keys()
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), name
    assert losses(killed) == losses(tmp_path / "unbroken")


@pytest.mark.slow
def test_same_recipe_and_seed_give_identical_loss_logs(tmp_path):
    """Determinism: two fresh fp32 runs of one recipe log the same losses, step for step."""
    run_to_end(tmp_path / "a", "adamw_torch")
    run_to_end(tmp_path / "b", "adamw_torch")
    assert len(losses(tmp_path / "a")) == 24
    assert losses(tmp_path / "a") == losses(tmp_path / "b")


@pytest.mark.integration
def test_checkpoints_are_safetensors_and_remote_code_is_off_by_default(tmp_path):
    """Weights are saved as safetensors (no pickle to load them), and hub code never runs unasked."""
    from finetune.recipe import parse_recipe

    assert parse_recipe([str(TINY_RECIPE)]).model_args.trust_remote_code is False
    out = tmp_path / "run"
    run_finetune(TINY_RECIPE, "--max_steps", 2, "--save_steps", 2, "--bf16", "false", "--max_train_samples", 16,
                 "--output_dir", out)
    for folder in (out, out / "checkpoint-2"):
        assert (folder / "model.safetensors").exists()
        assert not list(folder.glob("*.bin")) or [p.name for p in folder.glob("*.bin")] == ["training_args.bin"]


@pytest.mark.parametrize("output_dir, expected", [
    ("README.md/run", "is a file, not a folder"),
    ("/proc/1/run", "cannot write in /proc/1"),  # unwritable even for root
])
def test_unusable_output_dir_is_refused_before_anything_runs(output_dir, expected, capsys):
    from conftest import run_cli

    code, _, stderr = run_cli([TINY_RECIPE, "--output_dir", output_dir], capsys)
    assert code == 2 and expected in stderr and stderr.count("\n") == 1


def test_a_disk_too_full_for_one_checkpoint_is_refused_before_training(tmp_path, monkeypatch, capsys):
    """Free space is checked against one checkpoint (fp32 weights + optimizer moments) before training."""
    import shutil

    from conftest import run_cli

    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12 - 10, 10))
    out = tmp_path / "out"
    code, stdout, stderr = run_cli([TINY_RECIPE, "--max_train_samples", 16, "--output_dir", out], capsys)
    assert code == 2 and "one checkpoint needs about" in stderr and "Run plan" in stdout
    assert not out.exists()


@pytest.mark.integration
def test_save_total_limit_keeps_only_the_newest_checkpoints(tmp_path):
    out = tmp_path / "run"
    run_finetune(TINY_RECIPE, "--max_steps", 6, "--save_steps", 2, "--save_total_limit", 2, "--bf16", "false",
                 "--max_train_samples", 16, "--eval_steps", 100, "--output_dir", out)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]


def streamed(out, train_tunes, steps=6):
    return [str(TINY_RECIPE), "--streaming", "true", "--max_train_samples", str(train_tunes), "--max_steps", str(steps),
            "--save_steps", "3", "--eval_steps", "100", "--logging_steps", "1", "--max_seq_length", "128",
            "--optim", "adamw_torch", "--bf16", "false", "--output_dir", str(out)]


def cut_back_to_first_checkpoint(out):
    """What a run killed between its first and second checkpoint leaves behind."""
    for later in sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[1:]:
        shutil.rmtree(later)
    for name in ("model.safetensors", "trainer_state.json"):
        (out / name).unlink()


@pytest.mark.slow
def test_a_streamed_run_resumes_exactly_in_its_first_pass_and_is_refused_past_it(tmp_path):
    """Trainer replays a stream and skips the trained batches: exact within the first pass over the data (same
    weights and losses as an unbroken run); a checkpoint from a later pass is refused in one line."""
    run_finetune(*streamed(tmp_path / "unbroken", 64))
    run_finetune(*streamed(tmp_path / "cut", 64))
    cut_back_to_first_checkpoint(tmp_path / "cut")
    assert "Resuming from" in run_finetune(*streamed(tmp_path / "cut", 64)).stdout
    expected, resumed = weights(tmp_path / "unbroken"), weights(tmp_path / "cut")
    assert all(torch.equal(expected[name], resumed[name]) for name in expected)
    assert losses(tmp_path / "cut") == losses(tmp_path / "unbroken")

    run_finetune(*streamed(tmp_path / "passes", 4))  # 4 tunes make 2 steps a pass: step 3 is in pass 2
    cut_back_to_first_checkpoint(tmp_path / "passes")
    refused = subprocess.run([sys.executable, "run_finetune.py", *streamed(tmp_path / "passes", 4)], cwd=REPO,
                             capture_output=True, text=True)
    assert refused.returncode != 0 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "saved in pass 2" in refused.stderr
